"""Tuning (`[tune]`): every cell of the suite is a *contender* with an Optuna study of its own and
the same budget of trials, chosen on validation only; the chosen trial alone is then evaluated on test, once.

A trial is an ordinary cell: its config is the contender's with the sampled values set (and train.monitor
the tuned metric), its id also names its contender (never the contender's own), and the runner
trains it as any other (claims, checkpoints, resume, any executor), without the test split. This module
only asks Optuna for parameters, turns them into cells, runs them in waves through the executor, tells
Optuna what became of them and writes each contender's record. A study lives in a journal file beside the
cells (results/<suite>/tune/<contender>.journal), so a killed tuning run resumes: finished trials count
toward the budget, running ones finish with the parameters they were given (their cells resume from their
checkpoints), and only then are new ones asked for.

results/<suite>/tune/
  <contender>.journal     the Optuna study (JournalStorage): trials, parameters, states, reported epochs
  <contender>.json        the contender's record (see `Contender.record`): its trials, the chosen one, the cost

Modules, top to bottom: `waves` (tune_suite: trials in waves through the executor, the console line),
`contender` (one contender's study, its budget, choice and record), `space` (the [tune] space: sampling,
trial configs, the up-front check), `pruning` (what a trial's own process imports: its epochs reported to
the study, which may stop it). This file imports none of them, so a trial never loads the orchestrator.
"""
