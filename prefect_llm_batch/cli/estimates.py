"""The ``estimate`` command: the plan ``run`` sends with the same options, and its cost."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from .options import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_REQUESTS_PER_BATCH,
    SOURCE_HELP,
    AllowEmptyOption,
    BaseUrlOption,
    ColumnPrefixOption,
    EndpointOption,
    IdColumnOption,
    InvalidUtf8Option,
    LimitOption,
    LocalModelOption,
    MaxBytesOption,
    MaxRequestsOption,
    ModelColumnOption,
    ModelOption,
    ParamOption,
    PromptOption,
    ProviderOption,
    SchemaOption,
    SchemaStyleOption,
    StateDirOption,
    SystemOption,
    before_work,
    build_spec,
    check_choices,
    fail,
    resolve_state_dir,
)

if TYPE_CHECKING:
    from ..spec import JobSpec


def plan_estimate(
    source: str,
    spec: JobSpec,
    state_dir: str,
    limit: int | None,
    expected_output_tokens: int = 100,
    *,
    local_model: str | None = None,
    schema_style: str | None = None,
) -> Any:
    """Plan the job in the state directory, as ``run`` plans it, and estimate it (no HTTP, no key;
    for ``local``, no server: its model file is only read for its digest)."""
    from ..jobs import estimate as estimate_job
    from ..jobs import prepare
    from ..providers import make_provider, target_for
    from ..spec import SIMULATOR_KEY_BASE_URL, ProviderTarget

    if spec.provider == "simulator":  # the simulator's requests are keyed by this URL, whatever its port
        target = ProviderTarget(
            provider="simulator", base_url=SIMULATOR_KEY_BASE_URL, key_base_url=SIMULATOR_KEY_BASE_URL
        )
    elif spec.provider == "local":  # keyed by the model file's digest, as open_target keys it
        from ..local_model import check_gguf, local_key_base_url

        key_base_url = local_key_base_url(check_gguf(local_model))
        target = ProviderTarget(
            provider="local",
            base_url=key_base_url,
            key_base_url=key_base_url,
            schema_style="json_object_schema",
        )
    else:
        target = target_for(spec.provider, spec.base_url)
    if schema_style is not None:
        target = ProviderTarget(**{**target.model_dump(), "schema_style": schema_style})
    with make_provider(  # builds bodies only
        target, api_key="not-used-for-estimates", limits=spec.limits, endpoint=spec.endpoint
    ) as client:
        ref = prepare(source, spec, client, target, state_dir=state_dir, limit=limit)
    return estimate_job(ref, spec.params, expected_output_tokens=expected_output_tokens)


def estimate(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP)],
    prompt: PromptOption,
    model: ModelOption = "",
    system: SystemOption = None,
    schema: SchemaOption = None,
    column_prefix: ColumnPrefixOption = "",
    id_column: IdColumnOption = None,
    param: ParamOption = None,
    provider: ProviderOption = "simulator",
    base_url: BaseUrlOption = None,
    state_dir: StateDirOption = None,
    limit: LimitOption = None,
    max_requests_per_batch: MaxRequestsOption = DEFAULT_MAX_REQUESTS_PER_BATCH,
    max_batch_bytes: MaxBytesOption = DEFAULT_MAX_BATCH_BYTES,
    expected_output_tokens: Annotated[
        int, typer.Option(help="Output tokens assumed per request when no max_tokens param is set.")
    ] = 100,
    allow_empty: AllowEmptyOption = False,
    invalid_utf8: InvalidUtf8Option = "error",
    model_column: ModelColumnOption = None,
    endpoint: EndpointOption = "chat/completions",
    local_model: LocalModelOption = None,
    schema_style: SchemaStyleOption = None,
) -> None:
    """Rows, unique requests, cache hits, estimated tokens and batch cost, before anything is sent.

    Nothing goes over the network and no key is needed: the job is planned in the state
    directory, as `run` with the same options plans it (that run reuses the plan).
    """
    check_choices(provider, invalid_utf8)
    before_work()
    spec = build_spec(
        prompt=prompt, model=model, system=system, schema=schema, column_prefix=column_prefix,
        id_column=id_column, param=param, provider=provider, base_url=base_url,
        max_requests_per_batch=max_requests_per_batch, max_batch_bytes=max_batch_bytes,
        allow_empty=allow_empty, invalid_utf8=invalid_utf8, endpoint=endpoint, model_column=model_column,
    )  # fmt: skip
    from ..costs import BATCH_PRICES
    from ..errors import LLMBatchError

    try:
        result = plan_estimate(
            source, spec, resolve_state_dir(state_dir), limit, expected_output_tokens,
            local_model=local_model, schema_style=schema_style,
        )  # fmt: skip
    except LLMBatchError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"job {result.job_id}: {result.describe()}")
    if result.cost_usd is None:
        typer.echo(
            f"known models: {', '.join(sorted(BATCH_PRICES))} (prices at batch rates, USD per 1M tokens)"
        )
