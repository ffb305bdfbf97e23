import json

from ecephys_pipeline import lfp, logs

logs.to_file(snakemake.log[0])
with open(snakemake.input.lfp_record) as handle:
    record = json.load(handle)
lfp.convert_lfp(
    snakemake.input.lfp,
    snakemake.input.session,
    snakemake.output.store,
    source_sha256=record["sha256"],
    **snakemake.params.options,
)
