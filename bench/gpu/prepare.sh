#!/usr/bin/env bash
# Run HERE (a machine with the .NET 10 SDK): publishes the capacity probe and the `metering` CLI
# (server and client) self-contained for linux-x64 into one folder, because the GPU machine has
# neither a .NET runtime nor a network, and packs it into bench/gpu/out/metering-gpu.tar.gz
# (git-ignored) for run.sh to unpack there. The two programs share one runtime in the folder:
# the probe is published last, and both take every package at the versions in
# Directory.Packages.props. The last line gives the archive's size.
set -euo pipefail
cd "$(dirname "$0")/../.."

out_dir=bench/gpu/out
publish_dir="$out_dir/publish"
archive="$out_dir/metering-gpu.tar.gz"
# A self-contained .NET runtime with ASP.NET Core, ILGPU and the programs packs to about 50 MiB.
archive_bytes_max=$((80 * 1024 * 1024))

rm -rf "$publish_dir" "$archive" "$out_dir/probe.tar.gz"
mkdir -p "$out_dir"
for project in engine/Metering.Cli/Metering.Cli.csproj engine/Metering.Probe/Metering.Probe.csproj; do
    # ILGPU compiles kernels from IL by reflection, so nothing is trimmed.
    dotnet publish "$project" -c Release -r linux-x64 --self-contained \
        -p:PublishTrimmed=false -p:DebugType=none -p:GenerateDocumentationFile=false -o "$publish_dir" >&2
done
# Each program must start from the shared folder: a file the second publish replaced with an
# older version would show here, not on the GPU machine.
"$publish_dir/metering" --help >/dev/null
"$publish_dir/metering-probe" --help >/dev/null
tar -C "$publish_dir" -cf - . | gzip -9 > "$archive"
rm -rf "$publish_dir"

archive_bytes=$(stat -c %s "$archive")
if [ "$archive_bytes" -gt "$archive_bytes_max" ]; then
    echo "error: $archive is $archive_bytes bytes, over the $archive_bytes_max-byte limit" >&2
    exit 1
fi
echo "$archive: $((archive_bytes / 1024 / 1024)) MiB ($archive_bytes bytes)"
