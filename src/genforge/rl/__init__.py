"""Reinforcement-learning fine-tuning of trained generators against reward functions.

- ``rewards.py``    reward functions (built-ins per modality, user functions by dotted path),
                    their weighted sum, the contract checks and oracle-call counting
- ``algorithms.py`` advantages, clipped policy loss, KL estimators, entropy: pure functions
- ``diversity.py``  guard rails: diversity per modality and REINVENT's diversity filter
- ``policy.py``     the RL subclass of a family (GPT: token policy; diffusion: DDPO)
- ``finetune.py``   the rollout batch source and `genforge rl`
"""
