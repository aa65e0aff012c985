"""Reinforcement learning from feedback: the rollout machinery of the `ppo` and `grpo` stages.

    prompts [B, P] ─► rollout.sample (jaxtune.generate: prefill + KV-cache decode, one compiled
         │             while_loop) ─► tokens [B, N], mask, finished
         ├─► rewards.RewardSource (Python functions of the decoded text, built-ins from
         │    jaxtune.losses.verifiable, or a jaxtune reward model) ─► scores [B]
         ├─► sequences.join: prompt + response as one [B, P + N] sequence
         ├─► advantages.ppo_targets (old / reference log-probs, values, KL-shaped rewards, GAE,
         │    whitening) or advantages.grpo_targets (group-normalised rewards)
         └─► minibatches.epochs: `ppo_epochs` passes of `num_minibatches` train batches

One concept per file: settings.py (the config section shared by both stages), sequences.py,
rollout.py, rewards.py, value_head.py, advantages.py, minibatches.py, stats.py (rollout metrics
carried in the train batches), driver.py (the loop). The losses are jaxtune.losses.ppo and
jaxtune.losses.grpo; the reference policy is jaxtune.train.reference (adapters disabled, or a
copy).
"""
