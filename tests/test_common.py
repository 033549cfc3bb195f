"""scikit-learn's estimator checks over every head featurebank defines."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from featurebank.heads import LogisticHead, MLPHead

# Small settings keep the ~50 checks per head fast; every parameter keeps its meaning.
HEADS = [
    LogisticHead(),
    MLPHead(hidden_layer_sizes=(16,), max_iter=200, batch_size=32, random_state=0),
    MLPHead(hidden_layer_sizes=(16,), max_iter=200, batch_size=32, random_state=0,
            n_components=2),  # trained on a projection, folded back: still raw features in
]


@parametrize_with_checks(HEADS)
def test_sklearn_compatible_heads(estimator, check):
    check(estimator)
