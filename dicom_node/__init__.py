"""RTFSyn DICOM node: receive MR series, synthesize, send derived series back."""
__version__ = "0.1.0"
