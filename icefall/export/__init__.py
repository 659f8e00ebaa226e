"""Export helpers: ONNX metadata, the sherpa-onnx contract checklist, int8 quantisation,
TorchScript helpers, a sherpa-onnx decoding runner (in a child process), checkpoint loading
(``model_loading``) and the start-up shared by the export and ``*pretrained.py`` scripts
(``cli``).

Import the submodules directly (``from icefall.export.sherpa_contract import
check_sherpa_onnx_contract``); this package imports nothing heavy itself.
"""
