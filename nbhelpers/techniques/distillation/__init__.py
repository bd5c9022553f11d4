"""Knowledge distillation: Hinton's soft-target loss, logit matching, a teacher-logit cache, a
cached teacher trained on shifted views, FitNets hints, and ``StudentLab``, which trains and scores
students.

* ``losses``: ``soft_targets``, ``hinton_loss``, ``logit_loss``, ``distillation_loss`` and
  ``make_loss_fn`` (a ``loss_fn`` for ``train.fit``); ``alpha`` is always the weight of the
  teacher term: ``loss = (1 - alpha) * CE(student, labels) + alpha * teacher_term``;
* ``teacher``: ``build_teacher``, ``get_teacher`` (trained on the views, cached), ``train_teacher``
  and ``TeacherLogits`` (the teacher run once over a training set, each batch looked up exactly);
* ``dropout_recipe``: Hinton et al.'s 2012 teacher recipe (``TeacherRecipe``): ``RandomShift``
  jitter, input dropout, ``max_norm_``, ``DampedMomentum`` with its ``MomentumRamp``;
* ``transfer``: ``shifted_copies`` and ``random_images``, the sets a student can learn on;
* ``hints``: ``penultimate`` and ``hint_stage`` (FitNets stage 1);
* ``student``: ``train_student``, ``StudentLab``, ``check_budget``, ``gap_closed``,
  ``gap_interval``;
* ``sequence``: a character language model distilled per position (``sequence_hinton_loss``,
  ``teacher_loss_fn``, ``train_distilled``) and ``gap_closed_interval`` in bits per character.

Everything public is re-exported here (``from nbhelpers.techniques import distillation;
distillation.hinton_loss``); notebook 07's soft-target table and facts are in
``nbhelpers.lessons.distillation``.
"""

from nbhelpers.techniques.distillation.dropout_recipe import (
    TEACHER_OPTIMIZERS,
    DampedMomentum,
    MomentumRamp,
    RandomShift,
    TeacherRecipe,
    max_norm_,
    max_norm_hook,
    momentum_at,
    rate_at,
)
from nbhelpers.techniques.distillation.hints import hint_stage, penultimate
from nbhelpers.techniques.distillation.losses import (
    LOSSES,
    check_alpha,
    check_temperature,
    distillation_loss,
    hinton_loss,
    logit_loss,
    make_loss_fn,
    soft_targets,
)
from nbhelpers.techniques.distillation.sequence import (
    gap_closed_interval,
    sequence_hinton_loss,
    teacher_loss_fn,
    train_distilled,
)
from nbhelpers.techniques.distillation.student import (
    TRAIN_SETS,
    StudentLab,
    check_budget,
    gap_closed,
    gap_interval,
    train_student,
)
from nbhelpers.techniques.distillation.teacher import (
    TEACHERS,
    TeacherLogits,
    build_teacher,
    get_teacher,
    train_teacher,
)
from nbhelpers.techniques.distillation.transfer import random_images, shifted_copies

__all__ = [
    "LOSSES",
    "TEACHERS",
    "TEACHER_OPTIMIZERS",
    "TRAIN_SETS",
    "DampedMomentum",
    "MomentumRamp",
    "RandomShift",
    "StudentLab",
    "TeacherLogits",
    "TeacherRecipe",
    "build_teacher",
    "check_alpha",
    "check_budget",
    "check_temperature",
    "distillation_loss",
    "gap_closed",
    "gap_closed_interval",
    "gap_interval",
    "get_teacher",
    "hint_stage",
    "hinton_loss",
    "logit_loss",
    "make_loss_fn",
    "max_norm_",
    "max_norm_hook",
    "momentum_at",
    "penultimate",
    "random_images",
    "rate_at",
    "sequence_hinton_loss",
    "shifted_copies",
    "soft_targets",
    "teacher_loss_fn",
    "train_distilled",
    "train_student",
    "train_teacher",
]
