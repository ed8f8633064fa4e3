"""Run by tests/test_distributed.py under torchrun: train, then report whether all ranks hold the same weights."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tinytales.train import TrainConfig, train

data, tokenizer, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(1)
config = TrainConfig.from_sources(preset="tiny", data=data, tokenizer=tokenizer, out=out, max_steps=steps,
                                  checkpoint_every=3, log_every=1, progress=False, plot=False, precision="fp32",
                                  model={"dropout": 0.1}, resume="auto")
result = train(config)
weights = torch.cat([p.detach().flatten() for p in result.model.parameters()])  # (N,)
gathered = [torch.zeros_like(weights) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, weights)
if dist.get_rank() == 0:
    report = {"world_size": dist.get_world_size(), "steps": result.steps,
              "max_difference": max(float((g - gathered[0]).abs().max()) for g in gathered)}
    (Path(out) / "ddp_report.json").write_text(json.dumps(report))
dist.barrier()  # both ranks finish together: a rank that leaves early can abort the other's gloo threads
dist.destroy_process_group()
