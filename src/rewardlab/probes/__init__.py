"""Reward probes: one idea per module.

    splits     train/val/test split grouped by prompt id (no prompt in two splits)
    linear     ridge (closed form), SGD (the original probe project's settings), logistic, Bradley-Terry, MLP probes
    metrics    R^2, Pearson, Spearman (overall, within prompt), pairwise accuracy, AUC, with CIs
    baselines  length, bag of words, control task (selectivity)
    sweep      every site x position of one or more models, best cell on test prompts
    cross      correlations among reward signals, difference-of-means direction, cosines
    kinds      rating vs winner/loser vs Bradley-Terry probes: each on the others' tasks, direction cosines
    best_of_n  best-of-n selection by a scorer, exact over every n-subset
"""
