"""MRNet (Bien et al. 2018): knee MRI, three tasks x three planes, a logistic regression per task.

Modules: :mod:`.data` (exams -> slice tensors, the stratified tune hold-out), :mod:`.train`
(the Lightning module and the 9-network grid), :mod:`.evaluate` (metrics, table, ROC curves,
CAMs of the top slices), :mod:`.demo`. The recipe is :mod:`cxrlab.config.mrnet`, the predictor
a run folder opens :mod:`cxrlab.inference.mrnet`.

A run folder::

    RUN/config.yaml status.json split.json landmarks.json
    RUN/<task>/<plane>/  last.ckpt (every epoch, for --resume)  history.csv  best.json
                         best_auroc.pt best_loss.pt  done.json
    RUN/predictions_{train,tune,valid}.csv   per exam: labels and every network's probability
    RUN/combine.json     per task: the logistic regression over the planes and the threshold
    RUN/metrics.json table.md curves/roc_<task>_<model>.csv
    RUN/cams/<exam>_<task>_<plane>.npz   the top slice and its CAM for a few held-out exams
"""
