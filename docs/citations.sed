# Rewrites the old citations of notes outside the repository (W§n.m = allen-warehouse.md,
# N§n.m = allen-nwb.md, "architecture §n" = docs/architecture.md) into citations of the
# repository's docs/. Run once on the merged tree, then delete this file:
#   sed -E -i -f docs/citations.sed src/ecephys_pipeline/download.py src/ecephys_pipeline/extract.py
# (any other file that still has a W§/N§ citation can be passed as well; afterwards
#  `grep -rnE '[WN]§' --include=*.py --include=*.md --include=*.yaml --include=*.smk .` is empty,
#  and tests/test_docs.py checks that every citation names an existing section).

# Line-exact rewrites that keep the lines within 100 characters.
/^AllenSDK does none of this \(W§1\.6, W§3\.2\): it writes straight to the final path with no read$/{
N
s/^AllenSDK does none of this \(W§1\.6, W§3\.2\): it writes straight to the final path with no read\ntimeout, no resume and no checksum\.$/AllenSDK does none of this (allen-warehouse.md §1.6, §3.2): it writes straight to the final path\nwith no read timeout, no resume and no checksum./
}
s/^# Stimulus parameter columns known from N§1\.4 \(union over session types\), with fixed types\.$/# Stimulus parameter columns of allen-nwb.md §1.4 (union over session types), with fixed types./

# "architecture §n" (no file name) -> docs/architecture.md §n
s/(^|[^/.A-Za-z_-])architecture §/\1docs\/architecture.md §/g

# A list of sections of one document names the document once: "W§1, W§3.2" -> "W§1, §3.2".
:w
s/(W§[0-9.]*[0-9]((, | \/ |\/)§[0-9.]*[0-9])*)(, | \/ |\/)W§/\1\4§/
tw
:n
s/(N§[0-9.]*[0-9]((, | \/ |\/)§[0-9.]*[0-9])*)(, | \/ |\/)N§/\1\4§/
tn

# Everything else.
s/W§/allen-warehouse.md §/g
s/N§/allen-nwb.md §/g
