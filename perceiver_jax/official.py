"""The architectures of DeepMind's published Perceiver IO checkpoints (the Hugging Face hub ids), as keyword
arguments that `PerceiverConfig` and `transformers.PerceiverConfig` both take, their head classes and their
parameter counts.

    config = PerceiverConfig(**official.ARCHITECTURES["deepmind/vision-perceiver-conv"])

Settings of training rather than architecture (dropout) are left at the configs' defaults.
"""

_VISION = dict(
    num_latents=512, d_latents=1024, num_blocks=8, num_self_attends_per_block=6, num_self_attention_heads=8,
    num_cross_attention_heads=1, num_labels=1000, image_size=224,
)  # fmt: skip

ARCHITECTURES: dict[str, dict] = {
    "deepmind/language-perceiver": dict(
        num_latents=256, d_latents=1280, d_model=768, num_blocks=1, num_self_attends_per_block=26,
        num_self_attention_heads=8, num_cross_attention_heads=8, qk_channels=256, v_channels=1280,
        max_position_embeddings=2048,
    ),
    "deepmind/vision-perceiver-learned": dict(_VISION, d_model=512),
    "deepmind/vision-perceiver-fourier": dict(_VISION, d_model=261),
    "deepmind/vision-perceiver-conv": dict(_VISION, d_model=322),
    "deepmind/optical-flow-perceiver": dict(
        num_latents=2048, d_latents=512, d_model=322, num_blocks=1, num_self_attends_per_block=24,
        num_self_attention_heads=16, num_cross_attention_heads=1, train_size=(368, 496),
    ),
    "deepmind/multimodal-perceiver": dict(
        num_latents=784, d_latents=512, d_model=704, num_blocks=1, num_self_attends_per_block=8,
        num_self_attention_heads=8, num_cross_attention_heads=1, num_labels=700, num_frames=16,
        audio_samples_per_frame=1920, samples_per_patch=16, image_size=224, output_shape=(1, 16, 224, 224),
        output_num_channels=512,
    ),
}  # fmt: skip

# The head class (HF's and ours) of each checkpoint.
HEAD_CLASSES: dict[str, str] = {
    "deepmind/language-perceiver": "PerceiverForMaskedLM",
    "deepmind/vision-perceiver-learned": "PerceiverForImageClassificationLearned",
    "deepmind/vision-perceiver-fourier": "PerceiverForImageClassificationFourier",
    "deepmind/vision-perceiver-conv": "PerceiverForImageClassificationConvProcessing",
    "deepmind/optical-flow-perceiver": "PerceiverForOpticalFlow",
    "deepmind/multimodal-perceiver": "PerceiverForMultimodalAutoencoding",
}

# Parameters of each checkpoint (HF's model and ours count the same).
NUM_PARAMETERS: dict[str, int] = {
    "deepmind/language-perceiver": 201_108_230,
    "deepmind/vision-perceiver-learned": 62_255_848,
    "deepmind/vision-perceiver-fourier": 48_440_627,
    "deepmind/vision-perceiver-conv": 48_646_522,
    "deepmind/optical-flow-perceiver": 41_057_134,
    "deepmind/multimodal-perceiver": 19_858_855,
}
