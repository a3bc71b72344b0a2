"""ggtalker_jax.audio: audio file I/O (`io`: load_audio, write_wav, check_not_silent) and per-video-frame
features (`features`: FeatureSpec (what a set of features is, stored with data and priors),
log_mel_per_frame, load_external_features, audio_energy_per_frame, speech_activity)."""
