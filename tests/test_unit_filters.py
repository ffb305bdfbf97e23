"""The one definition of the unit quality filters (AllenSDK semantics), on hand-made columns.

Six units, each built to sit on one edge of a rule; the expected masks are worked out by hand
from AllenSDK 2.16 (``EcephysProjectCache._get_units`` / ``Probes.get_units_table``): inclusive
thresholds, a switched-off threshold is +/-inf, and NaN never passes a comparison.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecephys_pipeline import selection
from ecephys_pipeline.unit_filters import normalise_filters, unit_mask

NAN = float("nan")
# unit:          0       1       2        3       4       5
QUALITY = ["good", "good", "noise", "good", "good", None]
AMPLITUDE = [0.1, 0.1001, 0.0, NAN, 0.05, 0.05]  # 0 on the limit, 1 just over, 3 NaN
PRESENCE = [0.95, 0.99, 0.99, 0.99, 0.9499, 0.99]  # 0 on the limit, 4 just under
ISI = [0.5, 0.0, 0.0, 0.0, 0.0, 0.0]  # 0 on the limit
VALID = [True, True, True, True, True, False]
IN_BRAIN = [True, True, True, True, False, True]


def columns(kind=np.array, **extra):
    return dict(
        quality=kind(QUALITY, dtype=object),
        amplitude_cutoff=kind(AMPLITUDE, dtype=float),
        presence_ratio=kind(PRESENCE, dtype=float),
        isi_violations=kind(ISI, dtype=float),
        **extra,
    )


def passing(**kwargs) -> list[int]:
    return np.flatnonzero(unit_mask(**kwargs)).tolist()


def test_defaults_are_inclusive_and_nan_fails():
    assert passing(**columns()) == [0]  # 5 has no quality label: not "good"


def test_a_threshold_switched_off_still_drops_nan():
    off = {"amplitude_cutoff_maximum": None}
    assert passing(**columns(), filters=off) == [0, 1]  # 3 (NaN amplitude) stays out
    everything = {
        "quality": None,
        "amplitude_cutoff_maximum": None,
        "presence_ratio_minimum": None,
        "isi_violations_maximum": None,
    }
    assert passing(**columns(), filters=everything) == [0, 1, 2, 4, 5]


def test_quality_label_list_and_missing_column():
    both = {"quality": ["good", "noise"], "amplitude_cutoff_maximum": 0.2}
    assert passing(**columns(), filters=both) == [0, 1, 2]
    no_column = {**columns(), "quality": None}
    assert passing(**no_column, filters={"amplitude_cutoff_maximum": 0.2}) == [0, 1, 2, 5]


def test_validity_and_brain_apply_only_when_known_and_on():
    lax = {"quality": None, "presence_ratio_minimum": 0.9}
    cols = columns(valid=np.array(VALID), in_brain=np.array(IN_BRAIN))
    assert passing(**cols, filters=lax) == [0, 2]  # 4 out of brain, 5 invalid channel
    assert passing(**cols, filters={**lax, "filter_by_validity": False}) == [0, 2, 5]
    assert passing(**cols, filters={**lax, "filter_out_of_brain_units": False}) == [0, 2, 4]
    assert passing(**columns(), filters=lax) == [0, 2, 4, 5]  # unknown: not applied


def test_pandas_columns_give_the_same_mask():
    for filters in (None, {"quality": ["noise"]}, {"presence_ratio_minimum": None}):
        as_numpy = unit_mask(**columns(), filters=filters)
        as_pandas = unit_mask(**columns(pd.Series), filters=filters)
        assert as_pandas.tolist() == as_numpy.tolist()
    nullable = columns(pd.Series)
    nullable["amplitude_cutoff"] = nullable["amplitude_cutoff"].astype("Float64")
    assert np.flatnonzero(unit_mask(**nullable)).tolist() == [0]


def test_unknown_filter_key_is_named():
    with pytest.raises(ValueError, match=r"unknown unit filter key\(s\) \['snr_minimum'\]"):
        normalise_filters({"snr_minimum": 1})
    assert normalise_filters(None) == normalise_filters({})
    assert normalise_filters({"quality": None})["quality"] is None


def test_selection_counts_units_csv_rows_with_the_same_rules():
    units = pd.DataFrame(
        {
            "quality": QUALITY,
            "amplitude_cutoff": AMPLITUDE,
            "presence_ratio": PRESENCE,
            "isi_violations": ISI,
        },
        index=pd.Index([10, 11, 12, 13, 14, 15], name="id"),
    )
    assert selection.filter_units(units).index.tolist() == [10]
    kept = selection.filter_units(units, {"quality": None, "presence_ratio_minimum": 0.9})
    assert kept.index.tolist() == [10, 12, 14, 15]  # no validity/structure columns: not applied
    with_structure = units.assign(ecephys_structure_id=[1.0, 1.0, 1.0, 1.0, NAN, 1.0])
    kept = selection.filter_units(with_structure, {"quality": None, "presence_ratio_minimum": 0.9})
    assert kept.index.tolist() == [10, 12, 15]
