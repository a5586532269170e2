#!/usr/bin/env bash
# Regenerates the committed code from proto/ (Swift for the package; C for the shim as it lands).
# Uses protoc from Debian's protobuf-compiler and protoc-gen-swift built from the swift-protobuf we depend on,
# so the generated code always matches the runtime version. Never the SwiftProtobuf build plugin (≈10 min builds).
#   scripts/generate-proto.sh          write the generated files
#   scripts/generate-proto.sh --check  fail if the committed files differ from freshly generated ones
set -euo pipefail
cd "$(dirname "$0")/.."

command -v protoc >/dev/null || { echo "generate-proto: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
command -v protoc-c >/dev/null || { echo "generate-proto: protoc-c not found (apt-get install protobuf-c-compiler)" >&2; exit 1; }

scratch=.build-protoc
swift build -c release --product protoc-gen-swift --scratch-path "$scratch" >/dev/null
plugin="$scratch/release/protoc-gen-swift"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir -p "$out/swift" "$out/c"
protoc --plugin=protoc-gen-swift="$plugin" --swift_opt=Visibility=Public --swift_out="$out/swift" -Iproto proto/*.proto
protoc-c --c_out="$out/c" -Iproto proto/*.proto

# generated-folder  fresh-output
targets=("Sources/WireFormat/Generated $out/swift" "Sources/CMeshShim/generated $out/c")
stale=0
for pair in "${targets[@]}"; do
    read -r target fresh <<<"$pair"
    if [[ "${1:-}" == "--check" ]]; then
        if ! diff -ru --exclude=README.md "$target" "$fresh"; then
            echo "generate-proto: committed code in $target is stale; run scripts/generate-proto.sh" >&2
            stale=1
        fi
    else
        mkdir -p "$target"
        find "$target" -name '*.pb*' -delete
        cp "$fresh"/* "$target"/
        echo "generate-proto: wrote $(ls "$fresh" | tr '\n' ' ')to $target"
    fi
done
[[ "${1:-}" == "--check" ]] && ((stale == 0)) && echo "generate-proto: generated code is up to date"
exit $stale
