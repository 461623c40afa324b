#!/usr/bin/env bash
# Run HERE (a machine with the .NET 10 SDK): publishes the capacity probe self-contained for
# linux-x64, because the GPU machine has neither a .NET runtime nor a network, and packs it into
# bench/gpu/out/probe.tar.gz (git-ignored) for run.sh to unpack there.
set -euo pipefail
cd "$(dirname "$0")/../.."

out_dir=bench/gpu/out
publish_dir="$out_dir/publish"
archive="$out_dir/probe.tar.gz"
archive_bytes_max=$((60 * 1024 * 1024))

rm -rf "$publish_dir" "$archive"
mkdir -p "$out_dir"
dotnet publish engine/Metering.Probe/Metering.Probe.csproj -c Release -r linux-x64 --self-contained \
    -p:PublishTrimmed=false -p:DebugType=none -o "$publish_dir" >&2
tar -C "$publish_dir" -czf "$archive" .
rm -rf "$publish_dir"

archive_bytes=$(stat -c %s "$archive")
if [ "$archive_bytes" -gt "$archive_bytes_max" ]; then
    echo "error: $archive is $archive_bytes bytes, over the $archive_bytes_max-byte limit" >&2
    exit 1
fi
echo "$archive: $((archive_bytes / 1024 / 1024)) MiB ($archive_bytes bytes)"
