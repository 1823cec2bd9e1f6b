"""Evaluation statistics of the paper's Table 2: DeLong AUC inference, binary metrics with confidence
intervals, the comparators (volume and BAT logistic models, NCCT markers), the Table-2 report and ROC plot."""
