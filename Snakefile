# ecephys-pipeline: Allen Visual Coding - Neuropixels metadata -> selection -> verified
# downloads -> hive-partitioned Parquet. See README.md and config/README.md.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, schema="workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/metadata.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/lfp.smk"


localrules:
    all,


rule all:
    default_target: True
    input:
        get_final_output,
