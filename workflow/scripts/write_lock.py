import logging
import sys

from ecephys_pipeline import download, layout, lockfile, logs, mirrors

logs.to_file(snakemake.log[0])
config = snakemake.config
pinned = lockfile.read_lock(config["lock_file"]) if config["lock_file"] else None
try:
    # every file as it is now, checked against its record and the pin: the lock file never
    # describes bytes that are not there (a file changed since its job ran is refused here)
    records = []
    for path in snakemake.input.records:
        dest = layout.nwb_of_record(path)
        expected = None
        if pinned is not None:
            expected = lockfile.expected_for(dest, pinned, cache_dir=config["cache_dir"])
        records.append(download.verified_file(path, expected=expected))
    verified_against = mirrors.dandi_versions(config) if config["dandi"]["verify_digests"] else {}
    lockfile.write_lock(
        records, snakemake.output.lock, cache_dir=config["cache_dir"], dandi=verified_against
    )
except (download.DownloadError, lockfile.LockError) as e:
    sys.exit(f"error: {e}")
logging.info(
    "lock file %s: %d files, %d bytes, each verified (size, sha256; DANDI: %s)",
    snakemake.output.lock,
    len(records),
    sum(r.size for r in records),
    f"{sum(bool(r.published) for r in records)} matching the published digests"
    if verified_against
    else "not used",
)
