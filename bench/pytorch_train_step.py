"""PyTorch reference for one MSA training step (forward, backward, Adam) on vit_b with the
encoder's Space and MLP adapters (ratio 0.25, MLP scale 0.5) in every block, every SAM
weight frozen, BCE(pos_weight=2) on the upsampled logits of one click per image. Prints one
JSON object. The adapted block follows MSA-SPEC 2.1 (as the shared msa_reference.py does).
With --full: no adapters, every SAM weight trains (full fine-tuning, `msa train --train all`).

    python bench/pytorch_train_step.py --size 256 --batch 1 --runs 3 [--device cuda] [--full]
        [--checkpoint-blocks] [--precision bf16] [--attention sdpa]
"""
import argparse
import json
import resource
import statistics
import time
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.image_encoder import window_partition, window_unpartition

import pytorch_options

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=256)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--runs", type=int, default=3)
p.add_argument("--device", default="cpu")
p.add_argument("--full", action="store_true")
p.add_argument("--checkpoint-blocks", action="store_true",
               help="recompute every encoder block in the backward (torch.utils.checkpoint)")
pytorch_options.add_options(p)
a = p.parse_args()
dev = torch.device(a.device)
autocast = pytorch_options.apply(a)


class Adapter(nn.Module):
    def __init__(self, dim, skip, ratio=0.25):
        super().__init__()
        self.skip = skip
        self.D_fc1 = nn.Linear(dim, int(dim * ratio))
        self.D_fc2 = nn.Linear(int(dim * ratio), dim)

    def forward(self, x):
        y = self.D_fc2(F.gelu(self.D_fc1(x)))
        return x + y if self.skip else y


class AdaptedBlock(nn.Module):
    def __init__(self, block):
        super().__init__()
        dim = block.norm1.normalized_shape[0]
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.window_size = block.window_size
        self.Space_Adapter = Adapter(dim, True)
        self.MLP_Adapter = Adapter(dim, False)

    def forward(self, x):
        shortcut = x
        xn = self.norm1(x)
        H, W = xn.shape[1], xn.shape[2]
        if self.window_size > 0:
            xw, pad = window_partition(xn, self.window_size)
            a = window_unpartition(self.Space_Adapter(self.attn(xw)), self.window_size, pad, (H, W))
        else:
            a = self.Space_Adapter(self.attn(xn))
        x = shortcut + a
        h = self.norm2(x)
        return x + self.mlp(h) + 0.5 * self.MLP_Adapter(h)


S = a.size
enc = ImageEncoderViT(img_size=S, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                      out_chans=256, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                      use_rel_pos=True, window_size=14, global_attn_indexes=[2, 5, 8, 11])
sam = Sam(image_encoder=enc,
          prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(S // 16, S // 16),
                                       input_image_size=(S, S), mask_in_chans=16),
          mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                   transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                   transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256))
class Recomputed(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=False)


if not a.full:
    sam.image_encoder.blocks = nn.ModuleList([AdaptedBlock(b) for b in sam.image_encoder.blocks])
if a.checkpoint_blocks:
    sam.image_encoder.blocks = nn.ModuleList([Recomputed(b) for b in sam.image_encoder.blocks])
sam = sam.to(dev)
for n, prm in sam.named_parameters():
    prm.requires_grad_(a.full or "Adapter" in n)
params = [prm for prm in sam.parameters() if prm.requires_grad]
opt = torch.optim.Adam(params, lr=1e-4)
x = torch.randn(a.batch, 3, S, S, device=dev)
mask = (torch.rand(a.batch, 1, S, S, device=dev) > 0.7).float()
pts = (torch.full((a.batch, 1, 2), S * 0.5, device=dev), torch.ones(a.batch, 1, device=dev))


def step():
    opt.zero_grad(set_to_none=True)
    with autocast:
        loss = forward()
    loss.backward()
    opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()


def forward():
    emb = sam.image_encoder(x)
    with torch.set_grad_enabled(a.full):
        sparse, dense = sam.prompt_encoder(points=pts, boxes=None, masks=None)
    md = sam.mask_decoder
    tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0).unsqueeze(0).expand(a.batch, -1, -1)
    tokens = torch.cat([tokens, sparse], 1)
    src = emb + dense
    pos = sam.prompt_encoder.get_dense_pe().expand(a.batch, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = md.transformer(src, pos, tokens)
    up = md.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = md.output_hypernetworks_mlps[0](hs[:, 1, :]).unsqueeze(1)
    low = (hyper @ up.reshape(b, up.shape[1], -1)).reshape(b, 1, up.shape[2], up.shape[3])
    pred = F.interpolate(low, (S, S), mode="bilinear", align_corners=False)
    return F.binary_cross_entropy_with_logits(pred.float(), mask, pos_weight=torch.tensor([2.0], device=dev))


step()
times = []
for _ in range(a.runs):
    t0 = time.perf_counter()
    step()
    times.append((time.perf_counter() - t0) * 1e3)
res = {"part": "train_step", "impl": f"pytorch {torch.__version__}", "preset": "vit_b", "size": S,
       "batch": a.batch, "full": a.full, "checkpoint_blocks": a.checkpoint_blocks,
       "precision": a.precision, "attention": a.attention, "runs": a.runs, "median_ms": statistics.median(times), "min_ms": min(times),
       "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
       "trainable": sum(p.numel() for p in params), "device": a.device, "threads": torch.get_num_threads()}
if dev.type == "cuda":
    res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(res))
