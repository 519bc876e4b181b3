"""Flow-matching samplers as pure functions: FlowEdit against the paper's algorithm written out
step by step, its identity (the source comes back exactly when both prompts agree), and the ODE
inversion round trip, on small velocity fields written here."""

import pytest
import torch

from flatten_video.pipelines.samplers import euler_invert, euler_sample, flowedit


def schedule(steps: int, shift: float = 3.0):
    """Shifted flow-matching levels from 1 down to 0, as Wan's scheduler makes them."""
    base = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    sigmas = (shift * base / (1 + (shift - 1) * base)).tolist()
    return [s * 1000 for s in sigmas[:-1]], sigmas


def field(prompt_shift: float):
    """A smooth nonlinear velocity that depends on the latent, the time and a 'prompt'."""
    weight = torch.randn(4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64) / 4

    def velocity(z, index, t):
        flat = z.movedim(1, -1)
        return (torch.tanh(flat @ weight) * (1 + t / 1000) + prompt_shift).movedim(-1, 1)

    return velocity


def reference_flowedit(v_src, v_tar, x_src, timesteps, sigmas, n_max, n_min, n_avg, generator):
    """FlowEdit as the paper states it, one step and one noise at a time."""
    N = len(timesteps)
    z_edit, z_plain = x_src.clone(), None
    for i in range(N):
        if N - i > n_max:
            continue
        t_i, t_next = sigmas[i], sigmas[i + 1]
        if N - i > n_min:
            total = torch.zeros_like(x_src)
            for _ in range(n_avg):
                n = torch.randn(x_src.shape, generator=generator, dtype=x_src.dtype)
                z_src = (1 - t_i) * x_src + t_i * n
                z_tar = z_edit + z_src - x_src
                total += v_tar(z_tar, i, timesteps[i]) - v_src(z_src, i, timesteps[i])
            z_edit = z_edit + (t_next - t_i) * total / n_avg
        else:
            if z_plain is None:
                n = torch.randn(x_src.shape, generator=generator, dtype=x_src.dtype)
                z_plain = z_edit + ((1 - t_i) * x_src + t_i * n) - x_src
            z_plain = z_plain + (t_next - t_i) * v_tar(z_plain, i, timesteps[i])
    return z_edit if z_plain is None else z_plain


SOURCE = torch.randn(1, 4, 3, 4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("steps, n_max, n_min, n_avg", [(10, 8, 0, 1), (10, 10, 2, 3), (6, 4, 1, 2)])
def test_flowedit_follows_the_papers_algorithm(steps, n_max, n_min, n_avg):
    timesteps, sigmas = schedule(steps)
    v_src, v_tar = field(0.0), field(0.5)
    ours = flowedit(lambda zs, zt, i, t: (v_src(zs, i, t), v_tar(zt, i, t)), v_tar, SOURCE, timesteps, sigmas,
                    n_max=n_max, n_min=n_min, n_avg=n_avg, generator=torch.Generator().manual_seed(3))
    expected = reference_flowedit(v_src, v_tar, SOURCE, timesteps, sigmas, n_max, n_min, n_avg,
                                  torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)
    assert (ours - SOURCE).abs().max() > 1e-2  # the target prompt moved it


@pytest.mark.parametrize("steps", [1, 4, 25])
def test_flowedit_with_equal_prompts_returns_the_source_exactly(steps):
    timesteps, sigmas = schedule(steps)
    v = field(0.3)
    out = flowedit(lambda zs, zt, i, t: (v(zs, i, t), v(zt, i, t)), v, SOURCE, timesteps, sigmas, n_max=steps,
                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, SOURCE)


def test_flowedit_skips_the_first_steps_and_calls_the_callback():
    timesteps, sigmas = schedule(10)
    seen, v = [], field(0.5)
    flowedit(lambda zs, zt, i, t: (v(zs, i, t) * 0, v(zt, i, t)), v, SOURCE, timesteps, sigmas, n_max=4,
             callback=lambda i, t, z: seen.append(i) or z)
    assert seen == [6, 7, 8, 9]


def test_the_ode_inversion_round_trip_comes_back_closer_with_more_steps():
    v = field(0.2)
    errors = []
    for steps in (5, 20, 80):
        timesteps, sigmas = schedule(steps, shift=1.0)
        levels = {}
        noise = euler_invert(v, SOURCE, timesteps, sigmas, on_level=lambda i, z: levels.__setitem__(i, z))
        assert sorted(levels) == list(range(steps)) and torch.equal(levels[0], noise)
        back = euler_sample(v, noise, timesteps, sigmas)
        errors.append((back - SOURCE).abs().max().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 8  # Euler: error ~ 1 / steps
