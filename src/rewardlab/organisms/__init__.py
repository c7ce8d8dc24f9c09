"""Model organisms with planted rewards: the review world post-trained on rewards whose truth is known
(`build`), every diffing method's answer as a ranked hypothesis over the vocabulary (`hypotheses`),
and the scores of those hypotheses against the truth with CIs over seeds and samples (`score`,
`evaluate`). The `rewardlab organisms run` command is `rewardlab.stages.organisms`."""
