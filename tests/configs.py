"""Full-size configs of real pipelines, written out so tests can build them on the meta device."""

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_TEXT = {  # CLIP ViT-L/14 text tower
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768,
}
SD21_UNET = {
    **SD15_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
    "use_linear_projection": True, "upcast_attention": True, "sample_size": 96,
}
SD21_TEXT = {  # OpenCLIP ViT-H/14 text tower as diffusers ships it (23 of its 24 layers)
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "gelu", "projection_dim": 512,
}
SDXL_UNET = {
    "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "in_channels": 4,
    "layers_per_block": 2, "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10], "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True, "norm_num_groups": 32,
}
SDXL_TEXT_G = {  # OpenCLIP ViT-bigG/14 text tower, with projection
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "gelu", "projection_dim": 1280,
}
IF_I_XL_UNET = {  # DeepFloyd IF-I-XL-v1.0 stage I UNet (pixel space, 64 px)
    "act_fn": "gelu", "addition_embed_type": "text", "addition_embed_type_num_heads": 64, "attention_head_dim": 64,
    "block_out_channels": [512, 1024, 1536, 2048], "cross_attention_dim": 4096, "cross_attention_norm": "group_norm",
    "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                         "SimpleCrossAttnDownBlock2D"],
    "encoder_hid_dim": 4096, "in_channels": 3, "layers_per_block": 3, "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "out_channels": 6, "resnet_time_scale_shift": "scale_shift", "sample_size": 64,
    "up_block_types": ["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                       "ResnetUpsampleBlock2D"],
}
T5_V11_XXL = {  # google/t5-v1_1-xxl encoder (DeepFloyd IF, PixArt, SD3, FLUX)
    "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
}
PIXART_XL_2_1024 = {  # PixArt-alpha/PixArt-XL-2-1024-MS transformer
    "activation_fn": "gelu-approximate", "attention_bias": True, "attention_head_dim": 72, "caption_channels": 4096,
    "cross_attention_dim": 1152, "in_channels": 4, "norm_elementwise_affine": False, "norm_eps": 1e-06,
    "norm_type": "ada_norm_single", "num_attention_heads": 16, "num_embeds_ada_norm": 1000, "num_layers": 28,
    "out_channels": 8, "patch_size": 2, "sample_size": 128,
}
SD3_MEDIUM_TRANSFORMER = {  # stabilityai/stable-diffusion-3-medium-diffusers transformer (MMDiT)
    "attention_head_dim": 64, "caption_projection_dim": 1536, "in_channels": 16, "joint_attention_dim": 4096,
    "num_attention_heads": 24, "num_layers": 24, "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192, "sample_size": 128,
}
FLUX_1_DEV_TRANSFORMER = {  # black-forest-labs/FLUX.1-dev transformer (19 double-, 38 single-stream blocks)
    "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": True, "in_channels": 64,
    "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38,
    "patch_size": 1, "pooled_projection_dim": 768,
}
