"""The ``electric`` model commands end to end: train (tiny) -> export -> verify, via main()."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_models import SENTENCES

from electric.cli import main


def test_train_export_verify(tmp_path: Path, tiny_tokenizer_path: Path, capsys) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(8)))
    run_dir, out = tmp_path / "run", tmp_path / "artifact"
    assert main(["train", "--preset", "tiny", "--corpora", str(corpus), "--run-dir", str(run_dir),
                 "--tokenizer", str(tiny_tokenizer_path), "--set", "steps=6",
                 "--set", "eval_every=0"]) == 0
    assert (run_dir / "final.safetensors").is_file()

    assert main(["export", str(run_dir / "final.safetensors"), "--out", str(out),
                 "--variants", "fp32,int8"]) == 0
    manifest = json.loads((out / "electric.json").read_text())
    assert sorted(manifest["variants"]) == ["fp32", "int8"]
    assert manifest["training"]["steps"] == 6
    assert "fused ops: Attention 2" in capsys.readouterr().out

    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(SENTENCES))
    assert main(["verify", str(out), "--checkpoint", str(run_dir / "final.safetensors"),
                 "--sentences", str(sentences)]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert main(["verify", str(out)]) == 0  # against the energies stored at export

    # A tampered variant fails verification with exit status 1.
    onnx_file = out / manifest["variants"]["int8"]["file"]
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    assert main(["verify", str(out)]) == 1
    assert "FAILED: int8" in capsys.readouterr().err
