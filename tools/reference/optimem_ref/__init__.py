"""optimem_ref: the PyTorch reference of DeepSeek-OCR v1 (work in progress; see README.md).

Usage (from the repo root):
    import sys; sys.path.insert(0, 'tools/reference')
    from optimem_ref import OcrConfig, DeepseekOCR
"""

from .config import ClipConfig, DecoderConfig, OcrConfig, SamConfig, q_tokens
from .model import DeepseekOCR, OcrOutput
