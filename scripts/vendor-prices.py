#!/usr/bin/env python3
"""Vendors the model price table into crates/tollgate-llm/data/model_prices.json.

Reads LiteLLM's table (MIT; see model_prices.LICENSE.txt, kept beside the output) and keeps
only what tollgate prices: token-priced modes and the token fields, per token in USD, plus
context-window sizes. The version stamp names the source release and a hash of its content,
so every cost record can say which table priced it.

    python3 scripts/vendor-prices.py ../shared/data/model_prices.json
"""
import hashlib
import json
import pathlib
import shutil
import sys

MODES = {"chat", "completion", "embedding", "responses"}
FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write",
    "output_cost_per_reasoning_token": "reasoning",
    "input_cost_per_request": "request",
    "max_input_tokens": "max_input",
    "max_output_tokens": "max_output",
}


def main(src: str) -> None:
    raw = pathlib.Path(src).read_bytes()
    table = json.loads(raw)
    models = {}
    for name, entry in sorted(table.items()):
        if not isinstance(entry, dict) or entry.get("mode") not in MODES:
            continue
        row = {"provider": entry.get("litellm_provider", "")}
        for field, short in FIELDS.items():
            value = entry.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[short] = value
        if "input" in row or "output" in row:
            models[name] = row
    version = "litellm-1.105.3+" + hashlib.sha256(raw).hexdigest()[:12]
    out_dir = pathlib.Path(__file__).resolve().parent.parent / "crates/tollgate-llm/data"
    out = {"version": version, "models": models}
    (out_dir / "model_prices.json").write_text(
        json.dumps(out, separators=(",", ":"), sort_keys=True) + "\n"
    )
    shutil.copy(pathlib.Path(src).with_name("model_prices.LICENSE.txt"), out_dir)
    print(f"{len(models)} models, version {version}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/model_prices.json")
