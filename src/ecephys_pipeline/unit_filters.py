"""The unit quality filters: AllenSDK's defaults and the one mask both stages apply.

The selection stage counts the units of ``units.csv`` that pass (``unit_count`` per session and
probe); extraction marks the units of an NWB file that pass (``passes_default_filters``) and
keeps only those when asked. Both call :func:`unit_mask`, so the two can never disagree.

Semantics are AllenSDK 2.16's (``allensdk/brain_observatory/ecephys/__init__.py``
``UNIT_FILTER_DEFAULTS``; ``EcephysProjectCache._get_units`` for the cache CSVs,
``Probes.get_units_table`` for the NWB):

* thresholds are inclusive (``amplitude_cutoff <= max``, ``presence_ratio >= min``,
  ``isi_violations <= max``); a threshold set to null becomes +/-inf and the comparison is still
  made, so a unit with a NaN metric never passes, even with that threshold off;
* ``quality``: a label or a list of labels to keep; null keeps every label;
* ``filter_by_validity`` keeps units whose peak channel has valid data, and
  ``filter_out_of_brain_units`` those whose peak channel has a brain structure; each applies only
  where the caller knows it (an NWB electrodes table; not ``units.csv``, whose channels are the
  valid ones and which carries no structure, so there, as in AllenSDK, neither changes a count).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

#: AllenSDK's default unit filters (``allensdk.brain_observatory.ecephys.UNIT_FILTER_DEFAULTS``
#: plus ``filter_by_validity=True`` -> ``quality == "good"``), spelled as the spec spells them.
DEFAULT_UNIT_FILTERS: dict[str, Any] = {
    "quality": "good",
    "amplitude_cutoff_maximum": 0.1,
    "presence_ratio_minimum": 0.95,
    "isi_violations_maximum": 0.5,
    "filter_by_validity": True,
    "filter_out_of_brain_units": True,
}

# what a threshold switched off (null) becomes: AllenSDK's np.inf / -np.inf
_OFF = {
    "amplitude_cutoff_maximum": math.inf,
    "presence_ratio_minimum": -math.inf,
    "isi_violations_maximum": math.inf,
}


def normalise_filters(filters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every key of :data:`DEFAULT_UNIT_FILTERS`, the given values over the defaults.

    ``None`` (or ``{}``) means the defaults. An unknown key is a ValueError naming it.
    """
    filters = filters or {}
    unknown = set(filters) - set(DEFAULT_UNIT_FILTERS)
    if unknown:
        raise ValueError(
            f"unknown unit filter key(s) {sorted(unknown)}; known: {sorted(DEFAULT_UNIT_FILTERS)}"
        )
    return {**DEFAULT_UNIT_FILTERS, **filters}


def _floats(values: Any) -> np.ndarray:
    if isinstance(values, pd.Series | pd.Index | pd.api.extensions.ExtensionArray):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray(values, dtype=np.float64)


def _threshold(filters: Mapping[str, Any], key: str) -> float:
    value = filters[key]
    return _OFF[key] if value is None else float(value)


def filter_masks(
    *,
    quality: Any | None,
    amplitude_cutoff: Any,
    presence_ratio: Any,
    isi_violations: Any,
    valid: Any | None = None,
    in_brain: Any | None = None,
    filters: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """One boolean array per filter that applies, in the order of :data:`DEFAULT_UNIT_FILTERS`:
    which units pass that filter alone (the report draws them). Their AND is :func:`unit_mask`.

    Keys: ``quality``, ``amplitude_cutoff``, ``presence_ratio``, ``isi_violations``, ``valid``,
    ``in_brain``; ``quality``, ``valid`` and ``in_brain`` only where that filter is on and the
    column is given. A metric threshold is always compared (off = +/-inf), so NaN fails it.
    """
    f = normalise_filters(filters)
    masks: dict[str, np.ndarray] = {}
    labels = f["quality"]
    if labels is not None and quality is not None:
        allowed = [labels] if isinstance(labels, str) else list(labels)
        masks["quality"] = (
            pd.Series(np.asarray(quality, dtype=object)).isin(allowed).to_numpy(dtype=bool)
        )
    with np.errstate(invalid="ignore"):
        masks["amplitude_cutoff"] = _floats(amplitude_cutoff) <= _threshold(
            f, "amplitude_cutoff_maximum"
        )
        masks["presence_ratio"] = _floats(presence_ratio) >= _threshold(f, "presence_ratio_minimum")
        masks["isi_violations"] = _floats(isi_violations) <= _threshold(f, "isi_violations_maximum")
    if f["filter_by_validity"] and valid is not None:
        masks["valid"] = np.asarray(valid, dtype=bool)
    if f["filter_out_of_brain_units"] and in_brain is not None:
        masks["in_brain"] = np.asarray(in_brain, dtype=bool)
    return masks


def unit_mask(
    *,
    quality: Any | None,
    amplitude_cutoff: Any,
    presence_ratio: Any,
    isi_violations: Any,
    valid: Any | None = None,
    in_brain: Any | None = None,
    filters: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Boolean array: which units pass ``filters`` (None = AllenSDK's defaults).

    Arrays (numpy or pandas, one value per unit): ``quality`` labels, the three metrics,
    ``valid`` (the peak channel is known and has valid data) and ``in_brain`` (the peak channel is
    known and has a brain structure). An argument given as None is a column the caller does not
    have: the filter that needs it does not apply (``quality=None``: no quality filter).
    """
    masks = filter_masks(
        quality=quality,
        amplitude_cutoff=amplitude_cutoff,
        presence_ratio=presence_ratio,
        isi_violations=isi_violations,
        valid=valid,
        in_brain=in_brain,
        filters=filters,
    )
    return np.logical_and.reduce(list(masks.values()))
