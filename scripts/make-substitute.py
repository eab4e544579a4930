#!/usr/bin/env python3
"""Makes a substitute for a GGUF model: the same tokenizer, chat template and metadata with the
last transformer blocks dropped. It is what a dishonest provider could serve under the original's
model id to save compute; the tests and the verification benchmark use it to show that audits
catch it. Needs the `gguf` package (pip install gguf==0.19.0; ./scripts/test installs it).

Usage: make-substitute.py SRC.gguf DST.gguf [--drop N]   (default: drop 6 of the blocks)
"""

import argparse
import sys

import gguf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--drop", type=int, default=6, help="transformer blocks to drop from the end")
    args = ap.parse_args()

    reader = gguf.GGUFReader(args.src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    block_count_key = f"{arch}.block_count"
    blocks = int(reader.fields[block_count_key].contents())
    keep = blocks - args.drop
    if keep < 1:
        print(f"{args.src} has {blocks} blocks; cannot drop {args.drop}", file=sys.stderr)
        return 1

    writer = gguf.GGUFWriter(args.dst, arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = keep if field.name == block_count_key else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub)

    def kept(name: str) -> bool:
        parts = name.split(".")
        return not (parts[0] == "blk" and int(parts[1]) >= keep)

    tensors = [t for t in reader.tensors if kept(t.name)]
    for t in tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    print(f"{args.dst}: {keep} of {blocks} blocks, {len(tensors)} of {len(reader.tensors)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
