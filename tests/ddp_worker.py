"""Run by tests/test_distributed.py under torchrun: train, then write down what this process ended with."""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tinytales.config import TrainConfig
from tinytales.train import train

data, tokenizer, out, steps, report_dir = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
torch.set_num_threads(1)
config = TrainConfig.from_sources(preset="tiny", data=data, tokenizer=tokenizer, out=out, max_steps=steps,
                                  checkpoint_every=3, log_every=1, progress=False, plot=False, precision="fp32",
                                  model={"dropout": 0.1}, resume="auto")
result = train(config)
rank = int(os.environ["RANK"])
tasks = Path("/proc/self/task")
threads = sorted((task / "comm").read_text().strip() for task in tasks.iterdir()) if tasks.is_dir() else None
report_dir.mkdir(parents=True, exist_ok=True)
torch.save(result.model.state_dict(), report_dir / f"weights-{rank}.pt")
(report_dir / f"report-{rank}.json").write_text(json.dumps({
    "world_size": int(os.environ["WORLD_SIZE"]), "steps": result.steps,
    "group_initialized": dist.is_initialized(), "threads": threads}))
