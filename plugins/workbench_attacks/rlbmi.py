"""RLB-MI, reinforcement-learning black-box model inversion (Han et al., CVPR 2023), spec/attacks-black-box.md A.

A soft actor-critic agent per (class, restart) searches the GAN's latent space; it sees the target
only through its oracle's probability vectors (`HanGyojin/RLB-MI@3a113bd`, cited as `file:line`):

1. An episode (`attack.py:16-46`): state s = z ~ N(0, I); for each of `max_step` steps the agent acts,
   a = tanh(mu(s) + e·std(s)) (`SAC.py:78-90`), the state moves to s' = α·s + (1 − α)·a
   (`attack.py:26`), and the reward is
   r = 2·log p(y | G(s')) + 2·log p(y | G(a)) + 8·log max(1e-7, p(y | G(s')) − max_{k≠y} p(k | G(s')))
   (`attack.py:32-37`); (s, a, r, s', done) goes to the replay buffer and, once it holds more than
   `batch_size` transitions, the agent takes one SAC update (`SAC.py:169-177`).
2. The SAC update (`SAC.py:186-284`): critic target r + γ(1 − done)(min(Q1', Q2')(s', a'') −
   α_prev·log π(a''|s')); critic losses 0.5·mean (Q_i(s, a) − target)²; temperature loss
   −mean(log α·(log π + H̄)) with H̄ = −z_dim; actor loss mean(α·log π(ã|s) − Q1(s, ã)); soft update
   of both target critics with τ. log π is a *mean* over the action dimensions (`SAC.py:73`).
3. After every episode one test draw through the stochastic policy (`attack.py:49-61`); the image
   with the highest p_y over all episodes is the result (`>=`, `attack.py:64-70`): one image per
   class per restart.

The agents of a chunk of (class, restart) groups run in lockstep as batched networks (one
parameter tensor per layer with a leading agent axis; Adam is elementwise, so this is exactly
independent agents), each with its own seeded random streams: a group's result does not depend on
which groups share a chunk. GMI's prior (cached, shared with `gmi`) is the generator, as in the
reference (`main.py:36-41`). docs/attacks/rlbmi.md lists every constant's source and every deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from workbench.api import (
    AttackCapabilities,
    AttackContext,
    AttackResult,
    BatchSize,
    Count,
    QueryBudget,
    Steps,
    Width,
    seeds,
)
from workbench.attack_toolkit import (
    GANBudget,
    Group,
    check_finite,
    dtype_of,
    emit_progress,
    make_groups,
    report_steps,
)
from workbench_attacks.gmi import OnGMIPrior

REFERENCE = "HanGyojin/RLB-MI@3a113bd"


class RLBMIParams(GANBudget, QueryBudget):
    """RLB-MI's budget. Reference values: `HanGyojin/RLB-MI@3a113bd`, the paper's command
    (`run_experiments.sh:7`, VGG16; `:10,13` the same for IR-152 and Face.evoLVe) and the constants of
    `SAC.py:10-17`. Digits values are CPU deviations, each named."""

    prior_seed: int | None = None
    """Seed of GMI's prior (unset = the run's seed); the same value shares GMI's cached prior."""
    gp_weight: float = Field(10.0, ge=0)
    """WGAN-GP gradient-penalty weight of GMI's prior (part of its cache key, as in `gmi`)."""
    classes: list[int] | None = None
    """Private classes to attack (default: all). The reference attacks `n_target` classes drawn at
    random with seed 42 (`main.py:80-81`; all 1000 in the paper's command)."""
    first_classes: Count | None = None
    """Attack only the first N private classes; ignored when `classes` is set."""
    episodes: Steps = 3000
    """Episodes per agent (one agent per class and restart). Reference 40,000 (`-max_episodes`,
    `run_experiments.sh:7`; 10,000 in the "simplified" command, `:2`). Digits: 3000 (a CPU deviation)."""
    max_step: Count = 1
    """Environment steps per episode (reference 1, every released command: `run_experiments.sh:2,7`).
    With 1, every transition is terminal and the critic's target is the reward itself."""
    diversity: float = Field(0.0, ge=0, lt=1)
    """α in s' = α·s + (1 − α)·a (`attack.py:26,57`; the argument `-alpha`, `main.py:19`). Reference 0
    in every released command (then the state and action images coincide and are one query)."""
    reward_weights: tuple[float, float, float] = (2.0, 2.0, 8.0)
    """Weights of log p_y of the state image, log p_y of the action image and the log-margin
    (reference 2, 2, 8: `attack.py:37`)."""
    margin_floor: float = Field(1e-7, gt=0, lt=1)
    """The margin p_y − max_{k≠y} p_k is floored here before the log (reference 1e-7, `attack.py:36`)."""
    probability_floor: float = Field(1e-30, gt=0, lt=1e-7)
    """p_y is floored here before the log (not in the reference, which takes `log(softmax)` and gets
    −inf, then NaN in the critic, when p_y underflows: spec A.7.5). The oracle answers float32
    probabilities; the floor only acts on p_y < 1e-30."""
    hidden: Width = 64
    """Hidden width of the actor and the critics (reference 256: `hidden_size=256`, `main.py:84`;
    the class default 32 is unused). Digits: 64 (a CPU deviation, spec A.5)."""
    batch_size: BatchSize = 64
    """Transitions per SAC update, drawn uniformly without replacement; updates start once the
    buffer holds more (reference 256: `BATCH_SIZE`, `SAC.py:14,175`; `random.sample`, `SAC.py:309`).
    Digits: 64 (a CPU deviation, spec A.5)."""
    buffer_size: Count = 1_000_000
    """Replay capacity; the oldest transitions leave first (reference 10⁶: `BUFFER_SIZE`, `SAC.py:13`,
    a `deque(maxlen=...)`, `SAC.py:297`)."""
    gamma: float = Field(0.99, ge=0, le=1)
    """Discount γ (reference 0.99: `GAMMA`, `SAC.py:10`; no effect when `max_step` = 1)."""
    tau: float = Field(0.01, gt=0, le=1)
    """Soft-update rate of the target critics (reference 1e-2: `TAU`, `SAC.py:11,269-284`)."""
    lr_actor: float = Field(5e-4, gt=0)
    """Adam learning rate of the actor (reference 5e-4: `LR_ACTOR`, `SAC.py:15,150`)."""
    lr_critic: float = Field(5e-4, gt=0)
    """Adam learning rate of both critics (reference 5e-4: `LR_CRITIC`, `SAC.py:16,162-163`)."""
    lr_alpha: float = Field(5e-4, gt=0)
    """Adam learning rate of log α (reference 5e-4: the actor's, `SAC.py:143`)."""
    target_entropy: float | None = None
    """H̄ of the temperature loss; unset = −z_dim (reference `-action_size`, `SAC.py:140`). With the
    reference's per-dimension mean log π this makes α decay like exp(−lr·updates) (spec A.7.2)."""
    log_std_bounds: tuple[float, float] = (-20.0, 2.0)
    """The actor's log std is clamped to these (reference −20, 2: `SAC.py:29,64`)."""
    scalar_noise: bool = True
    """True: one N(0, 1) draw shared by every action dimension (and, in an update, by the whole
    batch), as the reference (`Normal(0, 1).sample()` is 0-d: `SAC.py:70-71,86-87`, spec A.7.1).
    False: one draw per dimension and sample, the textbook policy (a deviation)."""
    restarts: Count = 1
    """Independent agents per class (fresh networks and streams), each returning its best image.
    Reference: one agent per class (`main.py:83-85`)."""
    max_agents: Count = 64
    """Agents trained in lockstep as one batched network (results do not depend on it; memory grows
    with it: each agent keeps its replay buffer)."""

    @model_validator(mode="after")
    def _bounds_ordered(self) -> RLBMIParams:
        low, high = self.log_std_bounds
        if not low < high:
            raise ValueError(f"log_std_bounds = ({low}, {high}): the lower bound must be below the upper one")
        return self


# ---------------------------------------------------------------- batched networks


class AgentLinear(nn.Module):
    """One linear layer per agent: x `[A, n, in]` -> `[A, n, out]` (weight `[A, in, out]`)."""

    def __init__(self, agents: int, fan_in: int, fan_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(agents, fan_in, fan_out))
        self.bias = nn.Parameter(torch.empty(agents, 1, fan_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def init_agent(self, i: int, weight_bound: float, rng: torch.Generator) -> None:
        """Agent i's weight ~ U(±weight_bound), bias ~ U(±1/√fan_in) (PyTorch's default bias)."""
        fan_in, fan_out = self.weight.shape[1:]
        with torch.no_grad():
            # Drawn as PyTorch stores a Linear weight, [out, in], then transposed.
            w = (2 * torch.rand(fan_out, fan_in, generator=rng, dtype=torch.float64) - 1) * weight_bound
            b = (2 * torch.rand(fan_out, generator=rng, dtype=torch.float64) - 1) / math.sqrt(fan_in)
            self.weight[i] = w.T.to(self.weight.dtype)
            self.bias[i, 0] = b.to(self.bias.dtype)


class Actor(nn.Module):
    """The policy (`SAC.py:26-65`): fc1 (state → hidden), ReLU, fc2 (hidden → hidden), ReLU, heads mu
    and log_std (hidden → action), log_std clamped."""

    def __init__(self, agents: int, dim: int, hidden: int, log_std_bounds: tuple[float, float]):
        super().__init__()
        self.fc1, self.fc2 = AgentLinear(agents, dim, hidden), AgentLinear(agents, hidden, hidden)
        self.mu, self.log_std = AgentLinear(agents, hidden, dim), AgentLinear(agents, hidden, dim)
        self.log_std_bounds = log_std_bounds

    def init_agent(self, i: int, rng: torch.Generator) -> None:
        """PyTorch's default Linear init, U(±1/√fan_in): `Actor.reset_parameters` is never called
        (`SAC.py:51-55`)."""
        for layer in (self.fc1, self.fc2, self.mu, self.log_std):
            layer.init_agent(i, 1 / math.sqrt(layer.weight.shape[1]), rng)

    def forward(self, state: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.relu(self.fc2(torch.relu(self.fc1(state))))
        return self.mu(h), self.log_std(h).clamp(*self.log_std_bounds)

    def sample(self, state: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(a, log π(a|s)) for the squashed Gaussian a = tanh(mu + e·std), e = `noise` (broadcast over
        the batch and action dimensions when scalar); log π = mean over dimensions of
        log N(mu + e·std; mu, std) − log(1 − a² + 1e-6) (`SAC.py:67-75`). log N(mu + e·std; mu, std)
        = −e²/2 − log std − log √(2π), which is what `Normal.log_prob` computes, gradients included."""
        mu, log_std = self(state)
        action = torch.tanh(mu + noise * log_std.exp())
        log_normal = -0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)
        log_prob = (log_normal - torch.log(1 - action.pow(2) + 1e-6)).mean(dim=-1, keepdim=True)
        return action, log_prob


class Critic(nn.Module):
    """Q(s, a) (`SAC.py:93-122`): Linear(2·dim → hidden), ReLU, Linear(hidden → hidden), ReLU,
    Linear(hidden → 1) on cat(s, a)."""

    def __init__(self, agents: int, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = AgentLinear(agents, 2 * dim, hidden), AgentLinear(agents, hidden, hidden)
        self.fc3 = AgentLinear(agents, hidden, 1)

    def init_agent(self, i: int, rng: torch.Generator) -> None:
        """fc1, fc2 weights U(±1/√hidden): `hidden_init` takes `weight.size()[0]`, the out-features
        (`SAC.py:21-24,112-114`); fc3 U(±3e-3) (`SAC.py:115`); biases PyTorch's default."""
        hidden = self.fc1.weight.shape[2]
        self.fc1.init_agent(i, 1 / math.sqrt(hidden), rng)
        self.fc2.init_agent(i, 1 / math.sqrt(hidden), rng)
        self.fc3.init_agent(i, 3e-3, rng)

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        x = torch.cat([state, action], dim=-1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def soft_update(local: nn.Module, target: nn.Module, tau: float) -> None:
    """θ' ← τ·θ + (1 − τ)·θ' (`SAC.py:274-284`)."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), local.parameters(), strict=True):
            t.copy_(tau * s + (1.0 - tau) * t)


@dataclass
class Transitions:
    """A batch per agent: states, actions `[A, B, dim]`, rewards `[A, B, 1]`; next states and done
    flags only where some transition is not terminal (`max_step` > 1)."""

    states: Tensor
    actions: Tensor
    rewards: Tensor
    next_states: Tensor | None = None
    dones: Tensor | None = None


class SACAgents:
    """`A` independent SAC agents (`SAC.py:124-284`), batched along the first axis of every tensor.

    Critic 2 starts as a copy of critic 1, as in the reference, where every constructor re-seeds
    torch with the same seed (`SAC.py:106,153-160`; spec A.7.3), and both target critics as copies
    of theirs (`SAC.py:156-160`)."""

    def __init__(self, streams: list[torch.Generator], dim: int, p: RLBMIParams, device: torch.device,
                 dtype: torch.dtype = torch.float32):
        count = len(streams)
        self.p, self.dim = p, dim
        self.actor = Actor(count, dim, p.hidden, p.log_std_bounds)
        self.critic1 = Critic(count, dim, p.hidden)
        for i, rng in enumerate(streams):
            self.actor.init_agent(i, rng)
            self.critic1.init_agent(i, rng)
        self.actor.to(device, dtype)
        self.critic1.to(device, dtype)
        self.critic2 = Critic(count, dim, p.hidden).to(device, dtype)
        self.target1 = Critic(count, dim, p.hidden).to(device, dtype)
        self.target2 = Critic(count, dim, p.hidden).to(device, dtype)
        for copy in (self.critic2, self.target1, self.target2):
            copy.load_state_dict(self.critic1.state_dict())
            copy.requires_grad_(copy is self.critic2)
        self.log_alpha = torch.zeros(count, device=device, dtype=dtype, requires_grad=True)  # SAC.py:142
        self.alpha_prev = torch.ones(count, device=device, dtype=dtype)  # `self.alpha = 1` (SAC.py:141)
        self.target_entropy = -float(dim) if p.target_entropy is None else p.target_entropy
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=p.lr_actor)  # SAC.py:150
        self.critic1_opt = torch.optim.Adam(self.critic1.parameters(), lr=p.lr_critic)  # SAC.py:162
        self.critic2_opt = torch.optim.Adam(self.critic2.parameters(), lr=p.lr_critic)  # SAC.py:163
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=p.lr_alpha)  # SAC.py:143

    def act(self, state: Tensor, noise: Tensor) -> Tensor:
        """A stochastic action per agent for `state` `[A, dim]` (`get_action`, `SAC.py:78-90`)."""
        with torch.no_grad():
            return self.actor.sample(state[:, None], noise)[0][:, 0]

    def update(self, batch: Transitions, noise_now: Tensor, noise_next: Tensor | None = None) -> None:
        """One SAC update of every agent on its batch (`SAC.py:186-272`). Each loss is a mean over an
        agent's batch; the agents' losses are summed, so each agent gets its own gradient.

        Without `batch.next_states` every transition is terminal: the critic's target is the reward,
        and critic 2 and the target critics, read only through the next-state term, are not computed
        (the reference computes them and multiplies the term by zero: identical results)."""
        s, a, r = batch.states, batch.actions, batch.rewards
        per_agent = (1, 2)
        if batch.next_states is None:
            target = r
            critics = [(self.critic1, self.critic1_opt)]
        else:
            with torch.no_grad():
                a_next, log_pi_next = self.actor.sample(batch.next_states, noise_next)  # SAC.py:204
                q_next = torch.min(self.target1(batch.next_states, a_next),
                                   self.target2(batch.next_states, a_next))  # SAC.py:206-210
                alpha_prev = self.alpha_prev[:, None, None]
                target = r + self.p.gamma * (1 - batch.dones) * (q_next - alpha_prev * log_pi_next)  # :214
            critics = [(self.critic1, self.critic1_opt), (self.critic2, self.critic2_opt)]
        for critic, optimizer in critics:  # SAC.py:219-232
            loss = 0.5 * (critic(s, a) - target).pow(2).mean(dim=per_agent).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        alpha_now = self.log_alpha.detach().exp()  # SAC.py:236, before this update's step
        a_new, log_pi = self.actor.sample(s, noise_now)  # SAC.py:238
        alpha_loss = -(self.log_alpha[:, None, None] * (log_pi.detach() + self.target_entropy))  # :239
        self.alpha_opt.zero_grad()
        alpha_loss.mean(dim=per_agent).sum().backward()
        self.alpha_opt.step()
        self.alpha_prev = alpha_now  # SAC.py:244
        self.critic1.requires_grad_(False)  # the actor's loss moves the actor only
        actor_loss = (alpha_now[:, None, None] * log_pi - self.critic1(s, a_new)).mean(dim=per_agent).sum()  # :252
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        self.critic1.requires_grad_(True)
        if batch.next_states is not None:  # SAC.py:269-270
            soft_update(self.critic1, self.target1, self.p.tau)
            soft_update(self.critic2, self.target2, self.p.tau)


def sample_without_replacement(n: int, k: int, rng: torch.Generator) -> Tensor:
    """k distinct indices of range(n), uniformly (`random.sample`, `SAC.py:309`), in O(k) when n is
    large: the first k distinct values of i.i.d. uniform draws are a uniform k-subset in random order.
    A full permutation per update would cost O(n) with n up to 40,000 transitions per agent."""
    if n <= 4 * k:
        return torch.randperm(n, generator=rng)[:k]
    chosen = torch.empty(0, dtype=torch.long)
    while len(chosen) < k:
        draws = torch.cat([chosen, torch.randint(n, (2 * k,), generator=rng)])
        values, inverse = torch.unique(draws, return_inverse=True)
        first = torch.full((len(values),), len(draws)).scatter_reduce(0, inverse, torch.arange(len(draws)), "amin")
        chosen = draws[first.sort().values]
    return chosen[:k]


def rlb_reward(p_state: Tensor, p_action: Tensor, y: Tensor, p: RLBMIParams) -> Tensor:
    """Per row: w1·log p_s[y] + w2·log p_a[y] + w3·log max(margin_floor, p_s[y] − max_{k≠y} p_s[k])
    (`attack.py:34-37`), from probability vectors `[n, K]` (float64 out); p_y floored at
    `probability_floor` before its log."""
    p_state, p_action = p_state.double(), p_action.double()
    rows = torch.arange(len(y))
    ps_y, pa_y = p_state[rows, y], p_action[rows, y]
    others = p_state.clone()
    others[rows, y] = -math.inf
    margin = (ps_y - others.max(dim=1).values).clamp_min(p.margin_floor)
    w1, w2, w3 = p.reward_weights
    return (w1 * ps_y.clamp_min(p.probability_floor).log() + w2 * pa_y.clamp_min(p.probability_floor).log()
            + w3 * margin.log())


# ---------------------------------------------------------------- the attack


class RLBMI(OnGMIPrior):
    """RLB-MI: one SAC agent per class searching GMI's latent space, rewarded by T's probabilities."""

    name = "rlb-mi"
    capabilities = AttackCapabilities(access="black-box", prepares=True, seeded_prior=True)

    def __init__(self, params: RLBMIParams):
        self.params = params

    def noise(self, streams: list[torch.Generator], rows: int) -> Tensor:
        """e per agent `[A, rows or 1, dim or 1]`: one scalar per agent (and batch) in the reference."""
        if self.params.scalar_noise:
            return torch.cat([torch.randn(1, 1, 1, generator=g) for g in streams])
        return torch.stack([torch.randn(rows, self.params.z_dim, generator=g) for g in streams])

    def run_agents(self, ctx: AttackContext, generator, chunk: list[Group], *, total_agents: int) -> dict:
        """Train one agent per group of `chunk` in lockstep; their best test latents and scores."""
        p = self.params
        device, dim, count = torch.device(ctx.device), p.z_dim, len(chunk)
        stream = lambda purpose, g: seeds.generator(ctx.seed, "attack", self.name, purpose,  # noqa: E731
                                                    g.target_class, g.restart)
        agents = SACAgents([stream("agent", g) for g in chunk], dim, p, device)
        play = [stream("play", g) for g in chunk]  # episode starts, action noise, test draws
        replay = [stream("replay", g) for g in chunk]  # batches and the updates' noise
        y = torch.tensor([g.target_class for g in chunk])
        capacity = min(p.buffer_size, p.episodes * p.max_step)
        terminal_only = p.max_step == 1
        memory = {"states": torch.zeros(count, capacity, dim, device=device),
                  "actions": torch.zeros(count, capacity, dim, device=device),
                  "rewards": torch.zeros(count, capacity, 1, device=device)}
        if not terminal_only:
            memory["next_states"] = torch.zeros(count, capacity, dim, device=device)
            memory["dones"] = torch.zeros(count, capacity, 1, device=device)
        stored = 0
        best_score = torch.zeros(count, dtype=torch.float64)
        best_latent = torch.zeros(count, dim)
        best_episode = torch.zeros(count, dtype=torch.long)
        last_reward = torch.zeros(count, dtype=torch.float64)
        steps = report_steps(p.episodes, math.ceil(total_agents / p.max_agents))
        for episode in range(1, p.episodes + 1):
            state = torch.stack([torch.randn(dim, generator=g) for g in play])  # attack.py:20
            for t in range(p.max_step):  # attack.py:22-46
                action = agents.act(state.to(device), self.noise(play, 1).to(device)).cpu()
                next_state = p.diversity * state + (1 - p.diversity) * action  # attack.py:26
                if p.diversity == 0:  # s' = a: one image, one query
                    p_state = p_action = self.latent_probabilities(ctx, generator, action)
                else:
                    both = self.latent_probabilities(ctx, generator, torch.cat([next_state, action]))
                    p_state, p_action = both[:count], both[count:]
                reward = rlb_reward(p_state, p_action, y, p)
                check_finite(reward, attack=self.name, stage=f"attack:{self.name}", what="the reward")
                slot = stored % capacity  # a full buffer drops its oldest transition
                memory["states"][:, slot] = state.to(device)
                memory["actions"][:, slot] = action.to(device)
                memory["rewards"][:, slot, 0] = reward.to(device, torch.float32)
                if not terminal_only:
                    memory["next_states"][:, slot] = next_state.to(device)
                    memory["dones"][:, slot, 0] = float(t == p.max_step - 1)
                stored += 1
                if stored > p.batch_size:  # SAC.py:175
                    filled = min(stored, capacity)
                    index = torch.stack([sample_without_replacement(filled, p.batch_size, g) for g in replay])
                    rows = torch.arange(count)[:, None]
                    batch = Transitions(**{k: v[rows, index.to(device)] for k, v in memory.items()})
                    noise_next = None if terminal_only else self.noise(replay, p.batch_size).to(device)
                    agents.update(batch, self.noise(replay, p.batch_size).to(device), noise_next)
                state = next_state
                last_reward = reward
            z = torch.stack([torch.randn(dim, generator=g) for g in play])  # attack.py:53
            for _ in range(p.max_step):  # attack.py:54-57
                z = p.diversity * z + (1 - p.diversity) * agents.act(z.to(device), self.noise(play, 1).to(device)).cpu()
            score = self.latent_probabilities(ctx, generator, z)[torch.arange(count), y]  # attack.py:58-61
            better = score >= best_score  # attack.py:64: ties move to the later draw
            best_score = torch.where(better, score, best_score)
            best_latent[better] = z[better]
            best_episode[better] = episode
            if episode in steps:
                emit_progress(ctx, f"attack:{self.name}", step=episode, total=p.episodes, chunk=chunk,
                              group_loss=-last_reward, group_confidence=best_score)
        check_finite(agents.log_alpha.detach(), attack=self.name, stage=f"attack:{self.name}", what="log α")
        return {"latents": best_latent, "scores": best_score, "episodes": best_episode,
                "alpha": agents.log_alpha.detach().exp().cpu()}

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        classes, generator, hit = self.oracle_start(ctx)
        groups = make_groups(classes, p.restarts)
        # Thousands of tiny sequential steps: on a CPU one thread is fastest (a second one waiting for
        # the first made an episode 10-50x slower on a busy 2-core machine), and the figures then do
        # not depend on the job's thread count.
        threads = torch.get_num_threads()
        if torch.device(ctx.device).type == "cpu":
            torch.set_num_threads(1)
        try:
            parts = [self.run_agents(ctx, generator, groups[i : i + p.max_agents], total_agents=len(groups))
                     for i in range(0, len(groups), p.max_agents)]
        finally:
            torch.set_num_threads(threads)
        found = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
        with torch.no_grad():
            images = generator(found["latents"].to(ctx.device, dtype_of(generator))).cpu().float().clamp(0, 1)
        # The reference sends the state image and the action image every step and one test image
        # every episode (attack.py:28-33,58-60).
        reference = len(groups) * p.episodes * (2 * p.max_step + 1)
        figures = {
            "target_confidence": float(found["scores"].mean()),
            "best_episode": float(found["episodes"].double().mean()),
            "final_temperature": float(found["alpha"].double().mean()),
            "gan_cached": float(hit),
            "queries_reference": float(reference),
        }
        ctx.emit("log", level="info", message=f"rlb-mi: {len(groups)} agents x {p.episodes:,} episodes; "
                 f"{ctx.oracle.queries:,} queries ({reference:,} in the reference's loop)")
        return AttackResult(images=images, targets=torch.tensor([g.target_class for g in groups]),
                            restarts=torch.tensor([g.restart for g in groups]), figures=figures,
                            confidences=found["scores"].float())
