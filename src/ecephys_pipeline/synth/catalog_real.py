"""Facts about the real Visual Coding - Neuropixels catalogue, for the realistic synthetic dataset.

Sources are ``docs/allen-warehouse.md`` §5 (mostly) and ``docs/allen-nwb.md`` §7. Every item is
marked with how sure we are:

- CONFIRMED: stated in those docs (notebook outputs, issue threads, logs, public codebases).
- UNCONFIRMED: recalled or inferred, not checked against a primary source. Used only because a
  realistic fake needs *some* value; the pipeline must not depend on it being right.

Nothing here is read by the pipeline itself: only ``synth.make_dataset(realistic=True)`` uses it.
"""

from __future__ import annotations

PUBLISHED_AT = (
    "2019-10-03T00:00:00Z"  # CONFIRMED (allen-warehouse.md §2.1 example row, allen-warehouse.md §5)
)

BO = "brain_observatory_1.1"
FC = "functional_connectivity"

# CONFIRMED: the 21 session ids allen-warehouse.md §5 names in examples and tests (a subset of the
# 58 below).
KNOWN_SESSION_IDS: tuple[int, ...] = (
    715093703, 719161530, 721123822, 732592105, 737581020, 746083955, 751348571, 755434585,
    756029989, 759883607, 760693773, 763673393, 773418906, 774875821, 779839471, 791319847,
    797828357, 798911424, 799864342, 831882777, 839557629,
)  # fmt: skip

# CONFIRMED (allen-warehouse.md §5): the 58 session ids of the release, by session type, as three
# independent public analysis codebases list them (two of them split by type). 759228117, listed
# here before, is not a session: it appears only in AllenSDK's query-building tests; the real id is
# 759883607.
BO_SESSION_IDS: tuple[int, ...] = (
    715093703, 719161530, 721123822, 732592105, 737581020, 739448407, 742951821, 743475441,
    744228101, 746083955, 750332458, 750749662, 751348571, 754312389, 754829445, 755434585,
    756029989, 757216464, 757970808, 758798717, 759883607, 760345702, 760693773, 761418226,
    762120172, 762602078, 763673393, 773418906, 791319847, 797828357, 798911424, 799864342,
)  # fmt: skip
FC_SESSION_IDS: tuple[int, ...] = (
    766640955, 767871931, 768515987, 771160300, 771990200, 774875821, 778240327, 778998620,
    779839471, 781842082, 786091066, 787025148, 789848216, 793224716, 794812542, 816200189,
    819186360, 819701982, 821695405, 829720705, 831882777, 835479236, 839068429, 839557629,
    840012044, 847657808,
)  # fmt: skip

# The 58 session ids in session-table order (ascending id), CONFIRMED (allen-warehouse.md §5).
# Cross-check: the five WKF-known sessions are the first five, and 791319847 lands at position 42,
# which is where its NWB WellKnownFile id 1026124645 sits in the allen-warehouse.md §5 table-order
# list.
SESSION_IDS: tuple[int, ...] = tuple(sorted(BO_SESSION_IDS + FC_SESSION_IDS))

# CONFIRMED (allen-warehouse.md §5): NWB WellKnownFile ids of the 58 sessions, in session-table
# order.
SESSION_NWB_WKF_IDS: tuple[int, ...] = (
    1026124469, 1026124034, 1026123696, 1026123599, 1026123989, 1026123897, 1026123964,
    1026124068, 1026124429, 1026124262, 1026124724, 1026124242, 1026124863, 1026123537,
    1026124326, 1026124684, 1026124216, 1026124603, 1026123685, 1026123877, 1026123377,
    1026123651, 1026124702, 1026124793, 1026124884, 1026124569, 1026124500, 1026124293,
    1026124194, 1026124517, 1026124918, 1026124152, 1026124109, 1026124348, 1026124625,
    1026124179, 1026124007, 1026124309, 1026123803, 1026124405, 1026123847, 1026124645,
    1026124545, 1026124759, 1026124804, 1026124743, 1026125021, 1026124840, 1026124085,
    1026124368, 1026123824, 1026123625, 1026123787, 1026123519, 1026123725, 1026122596,
    1026124422, 1026123943,
)  # fmt: skip

# Session types, CONFIRMED (allen-warehouse.md §5): 32 brain_observatory_1.1, 26
# functional_connectivity.
SESSION_TYPES: dict[int, str] = {sid: BO for sid in BO_SESSION_IDS} | {
    sid: FC for sid in FC_SESSION_IDS
}

# Genotypes (CONFIRMED counts, allen-warehouse.md §5: 30/12/8/8). Which session has which is
# UNCONFIRMED except 715093703 (Sst, allen-warehouse.md §2.1 example row) and 839557629 (Pvalb,
# allen-warehouse.md §5).
WT = "wt/wt"
SST = "Sst-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt"
PVALB = "Pvalb-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt"
VIP = "Vip-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt"
GENOTYPE_COUNTS: dict[str, int] = {WT: 30, SST: 12, PVALB: 8, VIP: 8}
KNOWN_GENOTYPES: dict[int, str] = {715093703: SST, 839557629: PVALB}
KNOWN_AGES: dict[int, int] = {715093703: 118}  # CONFIRMED (allen-warehouse.md §2.1 example row)
KNOWN_SEXES: dict[int, str] = {715093703: "M"}  # CONFIRMED (allen-warehouse.md §2.1 example row)
AGE_RANGE_DAYS = (96, 129)  # CONFIRMED range seen (allen-warehouse.md §5)

# Specimen ids. CONFIRMED pairs from allen-warehouse.md §5; the other listed specimen ids are real
# but their sessions are not stated: assigned here to plausible sessions. The DANDI subject ids
# below support most of the pairing: a session's donor id is 3-9 below its specimen id wherever both
# are known (699733573/699733581, 734865729/734865738, 757329617/757329624), and the assigned
# specimen ids sit 3-8 above their session's DANDI subject id (703279277/703279284, ...,
# 772616820/772616823, which puts 772616823 on 799864342). 797828357 and 798911424 have no known
# subject id, so which of them has 775876828 and which 776061251 is UNCONFIRMED.
KNOWN_SPECIMENS: dict[int, int] = {715093703: 699733581, 756029989: 734865738, 773418906: 757329624}
UNASSIGNED_SPECIMEN_IDS: dict[int, int] = {  # pairing inferred as above (UNCONFIRMED)
    719161530: 703279284,
    721123822: 707296982,
    732592105: 717038288,
    737581020: 718643567,
    791319847: 769360779,
    797828357: 775876828,
    798911424: 776061251,
    799864342: 772616823,
}

# DANDI subject ids: the ``sub-<id>`` of a session's asset paths in dandisets 000021/000022 is the
# NWB ``/general/subject/subject_id``, which is the *donor* id (allen-nwb.md §1.7), not specimen_id.
# CONFIRMED from public code that pins DANDI assets by path (a 30-session download list of 000021,
# with asset ids; a 000021 pin whose size 1,736,516,600 B equals allen-warehouse.md §5's for
# 721123822; a 000022 pin for 766640955); not in the shared notes. Sessions without an entry get an
# UNCONFIRMED donor id 8 below their specimen id.
KNOWN_DONORS: dict[int, int] = {
    715093703: 699733573, 719161530: 703279277, 721123822: 707296975, 732592105: 717038285,
    737581020: 718643564, 739448407: 716813540, 742951821: 723627600, 743475441: 722882751,
    744228101: 719817799, 746083955: 726170927, 750332458: 726141242, 750749662: 726162193,
    751348571: 732548371, 754312389: 719828686, 754829445: 726298249, 755434585: 730760263,
    756029989: 734865729, 757216464: 733457986, 757970808: 730756767, 758798717: 735109599,
    759883607: 740268983, 760345702: 739783158, 760693773: 738651046, 761418226: 742714472,
    762120172: 745276220, 762602078: 744915196, 763673393: 742602884, 773418906: 757329617,
    791319847: 769360771, 799864342: 772616820, 766640955: 744912845,
}  # fmt: skip
DONOR_BELOW_SPECIMEN = 8  # UNCONFIRMED offset for sessions without a known donor id

# Probes: 332 in total (CONFIRMED), 5 or 6 per session; 732592105 and 839557629 have 5
# (CONFIRMED).
TOTAL_PROBES = 332
# Known probe ids per session, in name order A.. (CONFIRMED where listed in allen-warehouse.md §5).
# 719161530 is listed with A-E only, so it is taken to have 5 probes (UNCONFIRMED). 839557629 has 5
# probes, all without LFP (CONFIRMED, allen-warehouse.md §5).
KNOWN_PROBES: dict[int, tuple[int, ...]] = {
    715093703: (810755797, 810755799, 810755801, 810755803, 810755805, 810755807),
    719161530: (729445648, 729445650, 729445652, 729445654, 729445656),
    839557629: (846401828, 846401830, 846401834, 846401838, 846401841),
}
# Known probe ids without a known name slot: placed into their session's id sequence.
KNOWN_PROBE_IDS_PARTIAL: dict[int, tuple[int, ...]] = {
    779839471: (792645497, 792645504),  # CONFIRMED ids; slots UNCONFIRMED
    760693773: (769322820, 769322824, 769322827),  # CONFIRMED ids; slots UNCONFIRMED
    763673393: (773463023,),
    831882777: (832810584,),
}
# The seven real probes without an LFP file (CONFIRMED, allen-warehouse.md §5 / AllenSDK #2260), by
# session.
NO_LFP_PROBES: dict[int, tuple[int, ...]] = {
    763673393: (773463023,),
    831882777: (832810584,),
    839557629: (846401828, 846401830, 846401834, 846401838, 846401841),
}
NO_LFP_PROBE_IDS: tuple[int, ...] = tuple(p for ps in NO_LFP_PROBES.values() for p in ps)
# Sessions with 5 probes: 332 = 58*6 - 16, so 16 sessions have 5. 732592105 and 839557629 are
# CONFIRMED; the rest are UNCONFIRMED (chosen deterministically among sessions without a known
# 6-probe list).
FIVE_PROBE_SESSIONS_CONFIRMED: tuple[int, ...] = (732592105, 839557629)
N_FIVE_PROBE_SESSIONS = 58 * 6 - TOTAL_PROBES

# Known probe-level facts (CONFIRMED, allen-warehouse.md §2.2/§2.3 example rows).
KNOWN_PROBE_RATES: dict[int, tuple[float, float]] = {  # probe id -> (sampling_rate, lfp rate)
    729445648: (29999.967418, 1249.998642),
    792645504: (30000.035489, 1250.001479),
}
KNOWN_PROBE_PHASES: dict[int, str] = {729445648: "3a", 792645504: "3a"}
# Known first channel id of a probe (CONFIRMED: 849705558 is local_index 1 of probe 792645504,
# allen-warehouse.md §2.3), so local_index 0 is 849705556.
KNOWN_CHANNEL_BASES: dict[int, int] = {792645504: 849705556}

# Channel count per probe among valid channels (CONFIRMED examples 358-374 of 384).
VALID_CHANNELS_RANGE = (358, 374)

# Unit ids: 951061537 ... 951062898 for session 791319847 (CONFIRMED, allen-warehouse.md §5).
KNOWN_UNIT_ID_START: dict[int, int] = {791319847: 951061537}

# Real well-known file ids for LFP files (CONFIRMED, allen-warehouse.md §5). Others are made up in
# 1026124xxx.
KNOWN_LFP_WKF_IDS: dict[int, int] = {810755797: 1026124481, 810755805: 1026124475}
