"""Options shared by the PyTorch benchmark scripts: the precision the forward pass runs in
(torch.autocast, as PyTorch users train in mixed precision) and the attention kernel of the
ViT encoder (the official explicit softmax, or PyTorch's scaled_dot_product_attention with
SAM's decomposed relative-position bias as its additive mask)."""
import contextlib

import torch
import torch.nn.functional as F

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}


def add_options(p):
    p.add_argument("--precision", choices=["f32", "bf16", "f16"], default="f32",
                   help="autocast dtype of the forward pass (f32: no autocast)")
    p.add_argument("--attention", choices=["official", "sdpa"], default="official",
                   help="the encoder's attention: segment_anything's, or F.scaled_dot_product_attention")


def _sdpa_forward(self, x):
    from segment_anything.modeling import image_encoder

    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)
    bias = None
    if self.use_rel_pos:
        zeros = torch.zeros(b * self.num_heads, h * w, h * w, dtype=q.dtype, device=q.device)
        bias = image_encoder.add_decomposed_rel_pos(zeros, q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        bias = bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def apply(a):
    """Patches the encoder's attention as --attention says; returns the autocast context of
    --precision for the device `a.device`."""
    if a.attention == "sdpa":
        from segment_anything.modeling import image_encoder

        image_encoder.Attention.forward = _sdpa_forward
    if a.precision == "f32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(a.device).type, dtype=DTYPES[a.precision])
