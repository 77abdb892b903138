"""Regenerate the embedded model shipped in saelib/data/assets/ (embedded_model.safetensors + embedded_model.json).

    python scripts/train_embedded_model.py                 # the shipped weights: defaults, 1 thread
    python scripts/train_embedded_model.py --out /tmp/em   # somewhere else, e.g. to compare

Deterministic for the seed on CPU: the same torch build and thread count give the same weights bit for
bit (other thread counts or BLAS builds can change the last bits, and so the weights slightly).
One thread is the default: it is what the shipped weights used, and on a busy 2-core machine it is
several times faster than two (OpenMP threads that must share cores wait on each other).
Takes about 10 minutes.
"""
import argparse
from dataclasses import fields

import torch

from saelib.data.embedded_model import ASSETS, EmbeddedModelConfig, save_embedded_model, train_embedded_model
from saelib.data.tokenizer import WordTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ASSETS), help="directory for the two files (default: the package's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (part of what fixes the bits)")
    for f in fields(EmbeddedModelConfig):                      # every config field can be overridden
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = EmbeddedModelConfig(**{f.name: getattr(args, f.name) for f in fields(EmbeddedModelConfig)})
    model, record = train_embedded_model(cfg, log=lambda line: print(line, flush=True))
    record["torch_threads"] = args.threads
    save_embedded_model(model, WordTokenizer.for_corpus(), record, args.out)
    print(f"saved to {args.out}: held-out loss {record['heldout_loss']:.4f} nats/token, unigram entropy "
          f"{record['unigram_entropy']:.4f}, bigram entropy {record['bigram_entropy']:.4f}")


if __name__ == "__main__":
    main()
