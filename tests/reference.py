"""Float64 NumPy references for the method's math, written from METHOD.md alone."""

import numpy as np


def log_softmax(s):
  s = np.asarray(s, np.float64)
  m = s.max(axis=-1, keepdims=True)
  return s - m - np.log(np.exp(s - m).sum(axis=-1, keepdims=True))


def normalize_rows(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def bank_logits(z, bank, t):
  return np.asarray(z, np.float64) @ np.asarray(bank, np.float64).T / t


def instance_ce(s, idx):
  lp = log_softmax(s)
  return -np.mean(lp[np.arange(len(idx)), idx])


def sqrt_kl(s, direction="q_p"):
  lp, lq = log_softmax(s), log_softmax(np.asarray(s, np.float64) / 2)
  if direction == "q_p":
    return np.mean(np.sum(np.exp(lq) * (lq - lp), axis=-1))
  return np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1))


def logit_grad(s, idx, w):
  s = np.asarray(s, np.float64)
  p = np.exp(log_softmax(s))
  # q as sqrt(p) renormalised, the definition, not the softmax(s/2) identity.
  q = np.sqrt(p) / np.sqrt(p).sum(axis=-1, keepdims=True)
  onehot = np.zeros_like(p)
  onehot[np.arange(len(idx)), idx] = 1.0
  return (p - onehot) + w * (p - q)


def momentum_update(bank, z, idx, m):
  out = np.array(bank, np.float64)
  out[idx] = normalize_rows(m * out[idx] + (1 - m) * np.asarray(z, np.float64))
  return out


def grad_update(bank, z, g, lr, t):
  bank = np.asarray(bank, np.float64)
  z, g = np.asarray(z, np.float64), np.asarray(g, np.float64)
  return normalize_rows(bank - lr * g.T @ z / (z.shape[0] * t))
