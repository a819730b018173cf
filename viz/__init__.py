"""Figures of recipe results (plotly `Figure`s, never shown) and self-contained HTML reports."""

from viz.attention import attention_heatmaps, attention_layers
from viz.evaluation import edit_evaluation, evaluation_table
from viz.images import image_grid, trace_images
from viz.locogen import locogen_curve
from viz.report import Report
from viz.traces import (
    denoiser_layout, denoiser_site_map, denoiser_site_maps, dit_layout, ie_bars, text_encoder_grid, unet_layout,
)

__all__ = [
    "Report", "attention_heatmaps", "attention_layers", "denoiser_layout", "denoiser_site_map", "denoiser_site_maps", "dit_layout", "edit_evaluation",
    "evaluation_table", "ie_bars", "image_grid", "locogen_curve", "text_encoder_grid", "trace_images", "unet_layout",
]
