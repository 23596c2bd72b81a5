"""trlm's entry point: `python train.py stage=<sft|sft_think|dpo|grpo> [experiment=demo] [hardware=...]`."""

from trlm.cli import train_main

if __name__ == "__main__":
    train_main()
