"""Model directories other tools load: transformers 4.5x and 5.x, and plain Jinja (serving engines).

transformers 5 writes `tokenizer_class: TokenizersBackend` and `extra_special_tokens` as a list;
4.5x (lm-eval and serving setups pin it) knows neither and fails to load the tokenizer. Training's
chat template carries `{% generation %}` markers (TRL's assistant-only loss), which plain Jinja
rejects. A finished model is rewritten to the spelling both versions read, with the stage's
template without markers; the rendered text is the same.
"""

from __future__ import annotations

import json
from pathlib import Path

TOKENIZER_CONFIG, CHAT_TEMPLATE = "tokenizer_config.json", "chat_template.jinja"
FIVE_ONLY = ("backend", "is_local", "local_files_only")  # transformers 5 bookkeeping, not settings


def make_portable(model_dir: Path, chat_template: str | None = None) -> None:
    """Rewrites the directory's tokenizer config (and chat template, if given) for 4.5x and 5.x alike."""
    path = model_dir / TOKENIZER_CONFIG
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"  # 5.x reads it as its tokenizers backend
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):  # 4.5x: a list of added special tokens is `additional_special_tokens`
        config["additional_special_tokens"] = extra
    elif extra:
        config["extra_special_tokens"] = extra
    for key in FIVE_ONLY:
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    if chat_template is not None:
        (model_dir / CHAT_TEMPLATE).write_text(chat_template)
