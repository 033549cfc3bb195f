"""scikit-learn's estimator checks over every head featurebank defines."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from featurebank.heads import LogisticHead, MLPHead

# Small settings keep the ~50 checks per head fast (an epoch of one batch on the checks'
# few dozen rows, not min_epoch_rows' default 1,024); every parameter keeps its meaning.
_SMALL_MLP = dict(hidden_layer_sizes=(16,), max_iter=200, batch_size=32, min_epoch_rows=32,
                  random_state=0)
HEADS = [
    LogisticHead(),
    MLPHead(**_SMALL_MLP),
    MLPHead(**_SMALL_MLP, n_components=2),  # on a projection, folded back: raw features in
]

# The one check that needs a fit to reproduce another's iterates to 1e-7: a weight of 2 against
# the row twice. Both heads minimise the same weighted objective as the repeated rows' (tested
# on the objective in test_weights.py), but neither follows the same iterates to the end.
_EXPECTED_FAILURES = {
    "LogisticHead": {
        "check_sample_weight_equivalence_on_dense_data":
            "the weighted and the repeated problems are one objective (their standardisation, "
            "preconditioner, objective and gradient agree to 1e-15 even in float64), but on "
            "this 15-row, 30-feature problem the preconditioned L-BFGS iterates amplify the "
            "rounding of the two sums (1e-12 at iteration 12, 1e-6 at 20), so the points where "
            "the fits stop at tol=1e-4 differ by ~1e-3 in probability (scikit-learn's "
            "LogisticRegression declares this check failing at its defaults too); the "
            "objectives' equality is tested in test_weights.py",
    },
    "MLPHead": {
        "check_sample_weight_equivalence_on_dense_data":
            "mini-batch AdamW: a row of weight 2 is one draw, the row twice is two draws in "
            "other batches, so the iterates differ by design (as scikit-learn's MLPClassifier "
            "with adam); the weighted loss is tested in test_weights.py",
    },
}


def _expected_failures(estimator):
    return _EXPECTED_FAILURES.get(type(estimator).__name__, {})


@parametrize_with_checks(HEADS, expected_failed_checks=_expected_failures)
def test_sklearn_compatible_heads(estimator, check):
    check(estimator)
