"""Shared pytest fixtures."""

import pytest

# --- synth fixtures (owner: synth.py) -----------------------------------------------------------


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """A default synthetic dataset (seed 0, files generated eagerly); shared, do not modify."""
    from ecephys_pipeline import synth

    return synth.make_dataset(tmp_path_factory.mktemp("synth") / "dataset", seed=0)


@pytest.fixture(scope="session")
def synth_gen1_nwb(tmp_path_factory):
    """A Gen-1 (2019 layout) session NWB written with h5py; shared, do not modify."""
    from ecephys_pipeline import synth

    return synth.write_gen1_session_nwb(tmp_path_factory.mktemp("synth_gen1") / "gen1.nwb", seed=0)
