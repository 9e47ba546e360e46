"""Transfer learning from a PyTorch-trained CNN ("Training Neural Networks II").

1. PyTorch: a small CNN (conv-bn-relu-pool, conv-relu, global average pool)
   with a 5-way head is trained on digits 0-4: the stand-in for the network
   someone else trained.
2. Its body comes into fastnn twice: straight from the torch module
   (``fnn.interop.from_torch(body)``), and from its state_dict saved as a plain
   .npz of NumPy arrays (what a ``.pt`` converted elsewhere looks like; no torch
   needed to read it) loaded into a fastnn model built to match
   (``from_torch(path, model=...)``). Both give the torch body's features.
3. fastnn: the imported body is frozen (weights and BatchNorm statistics stay
   as trained), a new head (Linear-ReLU-Linear) for digits 5-9 is trained on
   a small training set.
4. Exported to ONNX too when onnx is installed (``fnn.export.to_onnx``).

Run: python examples/transfer_from_torch.py   (a few seconds; needs torch)

Measured (seed 0): torch on digits 0-4, test accuracy 0.99; a new two-layer
head for 5-9 on the frozen imported body, from 200 examples, 0.88 on the 269
test digits 5-9 (features learned on 0-4 carry over, not perfectly: 8x8
digits are a small world).
"""
import os
import tempfile

import numpy as np

import fastnn as fnn


def subset(X, y, digits, n=None, seed=0):
    keep = np.isin(y, digits)
    Xs, ys = X[keep], y[keep] - min(digits)
    if n is not None:
        idx = np.random.default_rng(seed).permutation(len(Xs))[:n]
        Xs, ys = Xs[idx], ys[idx]
    return np.ascontiguousarray(Xs), ys


def torch_body():
    import torch.nn as T
    return T.Sequential(T.Conv2d(1, 16, 3, padding=1), T.BatchNorm2d(16), T.ReLU(), T.MaxPool2d(2),
                        T.Conv2d(16, 32, 3, padding=1), T.ReLU(), T.AdaptiveAvgPool2d(1), T.Flatten())


def pretrain_in_torch(X, y, epochs=15, seed=0):
    """The body + a 5-way head trained with PyTorch's Adam; returns the body."""
    import torch
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    # One thread: batches of 64 8x8 images are too small to split, and on a
    # 2-core machine torch's second thread only fights fastnn's for the cores.
    torch.set_num_threads(1)
    try:
        return _pretrain(torch, X, y, epochs, seed)
    finally:
        torch.set_num_threads(threads)


def _pretrain(torch, X, y, epochs, seed):
    body = torch_body()
    net = torch.nn.Sequential(body, torch.nn.Linear(32, 5))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    order = np.random.default_rng(seed)
    net.train()
    for _ in range(epochs):
        for idx in np.array_split(order.permutation(len(X)), max(1, len(X) // 64)):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    net.eval()
    return net


def main(n_target=200, seed=0, verbose=True):
    """Runs the four steps; returns a dict of what it measured."""
    import torch
    say = print if verbose else (lambda *a: None)
    fnn.manual_seed(seed)
    X, y = fnn.data.load_digits(flatten=False)                 # (1797, 1, 8, 8) float32 in [0, 1]
    (Xtr, ytr), (Xte, yte) = fnn.data.split(X, y, (0.7, 0.3), seed=seed)

    # 1. PyTorch pretraining on 0-4.
    A_tr, A_te = subset(Xtr, ytr, range(0, 5)), subset(Xte, yte, range(0, 5))
    net = pretrain_in_torch(*A_tr, seed=seed)
    with torch.no_grad():
        torch_acc = float((net(torch.from_numpy(A_te[0])).argmax(1).numpy() == A_te[1]).mean())
    say(f"torch, digits 0-4: test accuracy {torch_acc:.4f}")
    body_t = net[0]

    # 2. Into fastnn: from the module, and from a plain .npz of its state_dict.
    body = fnn.interop.from_torch(body_t)
    folder = tempfile.mkdtemp()
    npz = os.path.join(folder, "torch_body.npz")
    np.savez(npz, **{k: v.numpy() for k, v in body_t.state_dict().items()})
    matching = fnn.nn.Sequential(
        fnn.nn.Conv2d(1, 16, 3, padding=1), fnn.nn.BatchNorm2d(16), fnn.nn.ReLU(), fnn.nn.MaxPool2d(2),
        fnn.nn.Conv2d(16, 32, 3, padding=1, activation="relu"), fnn.nn.GlobalAvgPool2d())
    body_npz = fnn.interop.from_torch(npz, model=matching)
    body.eval()
    body_npz.eval()
    with torch.no_grad():
        features_t = body_t(torch.from_numpy(Xte)).numpy()
    feature_error = max(float(np.abs(body(Xte) - features_t).max()),
                        float(np.abs(body_npz(Xte) - features_t).max()))
    say(f"imported body: features within {feature_error:.1e} of torch's")

    # 3. Freeze the body, train a new head for 5-9 on a small set.
    body.freeze()
    before = {k: v.copy() for k, v in body.state_dict().items()}
    head = fnn.nn.Sequential(fnn.nn.Linear(32, 64, activation="relu", rng=seed),
                             fnn.nn.Linear(64, 5, rng=seed + 1))
    model = fnn.nn.Sequential(body, head)
    B_tr, B_te = subset(Xtr, ytr, range(5, 10), n=n_target, seed=seed), subset(Xte, yte, range(5, 10))
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=1e-2),
                          seed=seed)
    trainer.fit(*B_tr, epochs=30, batch_size=50, progress=False)
    head_acc = trainer.evaluate(*B_te)["accuracy"]
    frozen = all(np.array_equal(v, body.state_dict()[k]) for k, v in before.items())
    say(f"fastnn, new head for 5-9 from {len(B_tr[1])} examples on the frozen torch body: test accuracy "
        f"{head_acc:.4f} (body unchanged: {frozen})")

    # 4. Deploy: the fine-tuned model to ONNX (when onnx is installed).
    onnx_path = None
    try:
        import onnx  # noqa: F401
    except ImportError:
        say("onnx not installed: skipping the ONNX export")
    else:
        onnx_path = os.path.join(folder, "digits_5_9.onnx")
        fnn.export.to_onnx(model, onnx_path, input_shape=(1, 8, 8))
        say(f"exported to {onnx_path}")
    return {"torch_accuracy": torch_acc, "feature_error": feature_error, "head_accuracy": head_acc,
            "body_frozen": frozen, "onnx_path": onnx_path, "model": model}


if __name__ == "__main__":
    main()
