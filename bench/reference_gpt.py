"""A compact hand-written PyTorch GPT-2 (nanoGPT-style), the issue's second baseline for training speed.

What a careful engineer writes in an afternoon: fused qkv, `scaled_dot_product_attention` with
`is_causal`, tanh GELU, tied embeddings, and the loss through the full float32 logits. It takes its
weights from a TinyTales GPT of the GPT-2 architecture (`from_tinytales`), so that all three
implementations of the training benchmark start from the same network.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.c_attn, self.c_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.c_fc, self.mlp_proj = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class ReferenceGPT(nn.Module):
    def __init__(self, vocab_size: int, context_length: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(context_length, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # (B, T, V), tied
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def param_groups(self, weight_decay: float) -> list[dict]:
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def from_tinytales(gpt) -> ReferenceGPT:
    """The reference network with the weights of a TinyTales GPT of the GPT-2 architecture (learned positions,
    LayerNorm with biases, GELU, tied embeddings, no grouped-query attention)."""
    c = gpt.config
    model = ReferenceGPT(c.vocab_size, c.context_length, c.n_layer, c.n_head, c.n_embd)
    with torch.no_grad():
        model.wte.weight.copy_(gpt.tok_emb.weight)
        model.wpe.weight.copy_(gpt.pos_emb.weight)
        for mine, theirs in zip(model.blocks, gpt.blocks):
            pairs = [(mine.ln_1, theirs.norm1), (mine.ln_2, theirs.norm2), (mine.c_attn, theirs.attn.qkv),
                     (mine.c_proj, theirs.attn.proj), (mine.c_fc, theirs.mlp.fc), (mine.mlp_proj, theirs.mlp.proj)]
            for a, b in pairs:
                a.weight.copy_(b.weight)
                a.bias.copy_(b.bias)
        model.ln_f.weight.copy_(gpt.norm_f.weight)
        model.ln_f.bias.copy_(gpt.norm_f.bias)
    return model
