"""Multimodal autoencoding on a CPU in a few minutes: a tiny Perceiver with the multimodal head on synthetic
clips (a moving shape whose class sets its form and colour and the pitch of a tone; offline): 4 frames of
16 x 16 video, 4 x 64 audio samples, 4 classes.

    python -m train --config configs/multimodal_tiny.py --workdir runs/multimodal_tiny

Measured on a 2-core CPU (2026-12-02): 1500 steps in 274 s, eval video PSNR 19.1 dB on the decoded points
against 14.6 dB for the mean frame of the eval clips (the printed baseline, which does not see the clip);
still below each clip's own mean frame (`clip_mean_psnr` 21.9 dB, an oracle that does). Audio PSNR 9.5 dB,
label top-1 0.25 (chance: the label input is masked and its loss weight small).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Tiny multimodal autoencoder on synthetic clips."""
    config = default.demo(
        "multimodal_autoencoding", steps=1500, batch=16, lr=1e-3, warmup=50, every=500,
        d_model=64, num_labels=4, num_frames=4, image_size=16, audio_samples_per_frame=64,
        samples_per_patch=16, output_shape=(1, 4, 16, 16), output_num_channels=64,
        _label_trainable_num_channels=64,
    )  # fmt: skip
    config.log_every = 20
    config.data.update(num_train_clips=2048, num_eval_clips=64, num_report_clips=4)
    config.data.num_points = dict(image=256, audio=8)
    # The paper's 0.03 on video suits Kinetics' 16 x 224 x 224 frames; at this size the video needs weight.
    config.data.loss_weights = dict(image=1.0, audio=1.0, label=0.01)
    return config
