"""hydra-submitit-launcher's launchers, with a failed job reported in one line."""
