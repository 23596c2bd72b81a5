"""Finished models load in transformers 4.5x and 5.x, and their chat template is plain Jinja."""

from __future__ import annotations

import json
import re
import subprocess
import venv
from pathlib import Path

import pytest
from jinja2 import Environment
from transformers import AutoTokenizer

from trlm.chat_template import chatml_template
from trlm.demo.tokenizer import train_demo_tokenizer
from trlm.paths import PROJECT_ROOT
from trlm.portable import make_portable

OLD_TRANSFORMERS = "transformers>=4.50,<4.58"  # the reference's line, and lm-eval / serving setups'
CHAT = [{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": "<think>\n5\n</think>\n5"}]


@pytest.fixture
def saved_tokenizer(tmp_path):
    """A stage-2 tokenizer as transformers 5 saves it: think tokens added, training template with markers."""
    tokenizer = train_demo_tokenizer(vocab_size=400)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]},
                                 replace_extra_special_tokens=False)  # fmt: skip
    tokenizer.chat_template = chatml_template("Sys.")
    tokenizer.save_pretrained(tmp_path)
    return tokenizer, tmp_path


def test_the_portable_config_uses_the_spelling_both_transformers_lines_read(saved_tokenizer):
    tokenizer, folder = saved_tokenizer
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    make_portable(folder, chatml_template("Sys.", generation_markers=False))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "extra_special_tokens" not in config
    assert config["additional_special_tokens"] == ["<think>", "</think>"]
    reloaded = AutoTokenizer.from_pretrained(folder)  # transformers 5 reads it back unchanged
    assert len(reloaded) == len(tokenizer) and reloaded.convert_tokens_to_ids(["<think>", "</think>"]) == [
        tokenizer.convert_tokens_to_ids("<think>"), tokenizer.convert_tokens_to_ids("</think>")]  # fmt: skip
    assert reloaded.apply_chat_template(CHAT, tokenize=False) == tokenizer.apply_chat_template(CHAT, tokenize=False)


def test_the_exported_template_is_plain_jinja_and_renders_the_same_text(saved_tokenizer):
    tokenizer, folder = saved_tokenizer
    with pytest.raises(Exception, match="generation"):  # the training template: plain Jinja refuses it
        Environment().from_string((folder / "chat_template.jinja").read_text())
    make_portable(folder, chatml_template("Sys.", generation_markers=False))
    plain = Environment().from_string((folder / "chat_template.jinja").read_text())
    assert plain.render(messages=CHAT, add_generation_prompt=False) == tokenizer.apply_chat_template(
        CHAT, tokenize=False)  # fmt: skip


@pytest.mark.slow
def test_a_finished_model_loads_in_transformers_4_5x(saved_tokenizer, compose_cfg):
    """In a throwaway venv (cached under outputs/.cache) with torch and transformers 4.5x alone."""
    from trlm.modeling import tiny_model_dir

    tokenizer, folder = saved_tokenizer
    model_dir = tiny_model_dir(compose_cfg("experiment=demo").model.tiny, folder.parent / "cache")
    for file in ("config.json", "model.safetensors", "generation_config.json"):
        (folder / file).write_bytes((model_dir / file).read_bytes())
    make_portable(folder, chatml_template("Sys.", generation_markers=False))
    python = old_transformers_python()
    script = (
        "import sys; from transformers import AutoTokenizer, AutoModelForCausalLM, __version__\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1]); m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "print(__version__, len(t), t.convert_tokens_to_ids('<think>'), m.num_parameters())\n"
        "print(t.apply_chat_template([{'role': 'user', 'content': '2 + 3?'}], tokenize=False,"
        " add_generation_prompt=True), end='')"
    )
    result = subprocess.run([str(python), "-c", script, str(folder)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    version, size, think, _ = result.stdout.splitlines()[0].split()
    assert version.startswith("4.5") and int(size) == len(tokenizer)
    assert int(think) == tokenizer.convert_tokens_to_ids("<think>")
    rendered = "\n".join(result.stdout.splitlines(keepends=False)[1:]) + "\n"
    assert rendered == tokenizer.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)


def old_transformers_python() -> Path:
    """A venv with transformers 4.5x and its dependencies; torch (and what torch imports) linked in from this
    environment rather than installed again (the install took most of this test's time)."""
    folder = PROJECT_ROOT / "outputs" / ".cache" / "venv-transformers-4.5x"
    python = folder / "bin" / "python"
    if not (folder / ".ready").exists():
        venv.create(folder, with_pip=True, clear=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", OLD_TRANSFORMERS], check=True, capture_output=True)
        linked = folder / "torch-from-outside"
        linked.mkdir()
        for module in torch_and_its_requirements():
            (linked / module.name).symlink_to(module)
        site = next((folder / "lib").glob("python3*/site-packages"))
        (site / "zz_torch_from_outside.pth").write_text(f"{linked}\n")  # after the venv's own packages
        (folder / ".ready").touch()
    return python


def torch_and_its_requirements() -> list[Path]:
    """torch and the distributions it requires, recursively: their top-level modules and metadata (which
    transformers reads to decide that torch is there)."""
    from importlib.metadata import distribution, packages_distributions

    def normal(name: str) -> str:
        return name.lower().replace("_", "-")

    wanted, todo = set(), ["torch"]
    while todo:
        name = normal(todo.pop())
        if name in wanted or name == "setuptools":  # the venv has its own
            continue
        wanted.add(name)
        todo += [re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0] for req in distribution(name).requires or []
                 if "extra ==" not in req]  # fmt: skip
    site = Path(__import__("torch").__file__).parents[1]
    modules = [m for m, dists in packages_distributions().items() if any(normal(d) in wanted for d in dists)]
    metadata = [Path(f.locate()).parent for name in wanted for f in distribution(name).files if f.name == "METADATA"]
    return [path for m in modules for path in (site / m, site / f"{m}.py") if path.exists()] + metadata
