# ecephys-pipeline: Allen Visual Coding - Neuropixels metadata -> selection -> verified
# downloads -> hive-partitioned Parquet. See README.md and config/README.md.
import sys

from snakemake.utils import min_version, validate

from ecephys_pipeline import config as pipeline_config

min_version("9.0")


configfile: "config/config.yaml"


# The package's checks first: a bad config or spec stops the run with one line per problem
# (key, problem, nearest valid key) and no traceback. Snakemake's validate then fills in the
# defaults, from the same schema file (it ships inside the package; workflow/schemas links to it).
cli_configfiles = list(workflow.overwrite_configfiles)
try:
    pipeline_config.check_config(
        config,
        # in merge order: the configfile directive's file, then --configfile's, then --config
        files=[f for f in workflow.configfiles if f not in cli_configfiles]
        + cli_configfiles,
        command_line=workflow.config_settings.config,
    )
    SPEC = pipeline_config.load_spec(config["selection"])
except ValueError as error:
    sys.exit(f"error: {error}")
validate(config, schema=str(pipeline_config.schema_path("config")))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/metadata.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/lfp.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


localrules:
    all,


rule all:
    default_target: True
    input:
        get_final_output,
        report_outputs,
