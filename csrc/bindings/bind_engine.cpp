// bind_engine.cpp: lowbit._core.Engine, the decoding engine (runtime/engine.h). No logic here:
// argument conversion, the GIL released around compute.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <vector>

#include "bindings/bind.h"
#include "model/config.h"
#include "common.h"
#include "gguf/gguf.h"
#include "model/kv_cache.h"
#include "model/observer.h"
#include "runtime/batch.h"
#include "runtime/engine.h"
#include "sampling/sampler.h"

namespace py = pybind11;

namespace lowbit {

std::vector<int32_t> token_ids(const py::handle& obj) {
    py::array arr = py::array::ensure(obj);
    LOWBIT_CHECK(arr, ValueError, "tokens must be a 1-D integer array");
    LOWBIT_CHECK(arr.ndim() == 1, ValueError, "tokens must be 1-D, got ", arr.ndim(), " dims");
    const char kind = arr.dtype().kind();
    LOWBIT_CHECK(kind == 'i' || kind == 'u' || arr.size() == 0, ValueError,
                 "tokens must be integers, got dtype kind '", kind, "'");
    auto ids = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    std::vector<int32_t> out(size_t(ids.size()));
    const int64_t* p = ids.data();
    for (size_t i = 0; i < out.size(); ++i) {
        LOWBIT_CHECK(p[i] >= 0 && p[i] <= INT32_MAX, ValueError, "token id ", p[i], " at index ", i,
                     " is out of range");
        out[i] = int32_t(p[i]);
    }
    return out;
}

namespace {

using runtime::Engine;

py::array_t<float> eval(Engine& e, const py::object& tokens, bool all_logits) {
    const std::vector<int32_t> ids = token_ids(tokens);
    const int64_t n_vocab = e.config().n_vocab;
    LOWBIT_CHECK(!ids.empty(), ValueError, "eval needs at least one token");
    py::array_t<float> out = all_logits ? py::array_t<float>({int64_t(ids.size()), n_vocab})
                                        : py::array_t<float>({n_vocab});
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        e.eval(ids.data(), int64_t(ids.size()), all_logits, dst);
    }
    return out;
}

// _core.eval_batch: items = [(Engine, tokens) or (Engine, tokens, Sampler, history)]; per item
// the last token's logits (n_vocab,), or with hidden=True the output-normed hidden states of all
// its tokens (n, n_embd); a sampled item (Sampler and its penalty window) gives the drawn token
// id, or a ValueError instance (not raised: the other items' results stand) when its draw failed.
py::list eval_batch(const py::sequence& items, bool hidden) {
    const size_t n_items = py::len(items);
    std::vector<std::vector<int32_t>> ids(n_items);
    std::vector<std::vector<int64_t>> histories(n_items);
    std::vector<int64_t> tokens(n_items, -1);
    std::vector<std::string> errors(n_items);
    std::vector<runtime::BatchItem> batch(n_items);
    std::vector<py::object> out(n_items);
    for (size_t i = 0; i < n_items; ++i) {
        LOWBIT_CHECK(py::isinstance<py::sequence>(items[i]), ValueError, "eval_batch item ", i,
                     " must be a pair (session, token ids) or (session, token ids, sampler, history)");
        py::sequence entry = py::reinterpret_borrow<py::object>(items[i]);
        const size_t len = py::len(entry);
        LOWBIT_CHECK(len == 2 || len == 4, ValueError, "eval_batch item ", i,
                     " must be a pair (session, token ids) or (session, token ids, sampler, history)");
        Engine* e = nullptr;
        sampling::Sampler* sampler = nullptr;
        try {
            e = entry[0].cast<Engine*>();
        } catch (const py::cast_error&) {
            throw ValueError(str("eval_batch item ", i, ": not a session"));
        }
        LOWBIT_CHECK(e, ValueError, "eval_batch item ", i, ": not a session");
        try {
            ids[i] = token_ids(entry[1]);
        } catch (const ValueError& err) {
            throw ValueError(str("eval_batch item ", i, ": ", err.what()));
        }
        LOWBIT_CHECK(!ids[i].empty(), ValueError, "eval_batch item ", i, ": no tokens");
        if (len == 4) {
            LOWBIT_CHECK(!hidden, ValueError, "eval_batch item ", i, ": a sampled item with hidden=True");
            try {
                sampler = entry[2].cast<sampling::Sampler*>();
                histories[i] = entry[3].cast<std::vector<int64_t>>();
            } catch (const py::cast_error&) {
                throw ValueError(str("eval_batch item ", i, ": expected a Sampler and a list of token ids"));
            }
            LOWBIT_CHECK(sampler, ValueError, "eval_batch item ", i, ": no sampler");
        }
        const model::ModelConfig& c = e->config();
        float* logits = nullptr;
        float* hidden_out = nullptr;
        if (hidden) {
            py::array_t<float> arr({int64_t(ids[i].size()), c.n_embd});
            hidden_out = arr.mutable_data();
            out[i] = std::move(arr);
        } else if (!sampler) {
            py::array_t<float> arr({c.n_vocab});
            logits = arr.mutable_data();
            out[i] = std::move(arr);
        }
        batch[i] = runtime::BatchItem{e, ids[i].data(), int64_t(ids[i].size()), logits, hidden_out, sampler,
                                      histories[i].data(), histories[i].size(), &tokens[i], &errors[i]};
    }
    {
        py::gil_scoped_release nogil;
        Engine::eval_batch(batch);
    }
    py::list result;
    for (size_t i = 0; i < n_items; ++i) {
        if (!batch[i].sampler)
            result.append(out[i]);
        else if (errors[i].empty())
            result.append(py::int_(tokens[i]));
        else
            result.append(py::handle(PyExc_ValueError)(py::str(errors[i])));
    }
    return result;
}

py::dict memory(const Engine& e) {
    const runtime::MemoryReport r = e.memory();
    py::dict weights;
    for (const auto& [type, bytes] : r.weights_by_type) weights[py::str(type)] = bytes;
    py::dict kv;
    kv["bytes"] = r.kv_bytes;
    kv["cells"] = r.kv_cells;
    kv["layers"] = r.kv_layers;
    kv["type"] = r.kv_type;
    py::dict d;
    d["weights"] = weights;
    d["weights_bytes"] = r.weights_bytes;
    d["weights_copied_bytes"] = r.weights_copied_bytes;
    d["kv_cache"] = kv;
    d["scratch_bytes"] = r.scratch_bytes;
    d["total_bytes"] = r.total_bytes;
    d["backend"] = r.device.empty() ? std::string("cpu") : r.device;
    py::dict dev;
    for (const auto& [part, bytes] : r.device_bytes) dev[py::str(part)] = bytes;
    d["device_bytes"] = dev;
    return d;
}

py::dict sum_squares(const model::SumSquaresObserver& o) {
    py::dict d;
    for (const auto& [name, e] : o.entries()) {
        py::array_t<double> sums(int64_t(e.sums.size()));
        std::copy(e.sums.begin(), e.sums.end(), sums.mutable_data());
        d[py::str(name)] = py::make_tuple(sums, e.rows);
    }
    return d;
}

py::array_t<double> gram(const model::GramObserver& o, const std::string& name) {
    const model::GramObserver::Entry& e = o.entry(name);
    py::array_t<double> out({e.cols, e.cols});
    std::copy(e.gram.begin(), e.gram.end(), out.mutable_data());
    return out;
}

void bind_observers(py::module_& m) {
    py::class_<model::MatmulObserver, std::shared_ptr<model::MatmulObserver>>(
        m, "MatmulObserver", "Sees the float input of every weight matmul of an Engine's evals (set_observer).");
    py::class_<model::SumSquaresObserver, model::MatmulObserver, std::shared_ptr<model::SumSquaresObserver>>(
        m, "SumSquaresObserver", "llama.cpp's imatrix statistics: per tensor, sum of x^2 per input column and rows seen.")
        .def(py::init<>())
        .def("entries", &sum_squares, "{tensor name: (sums (cols,) float64, rows)}")
        .def("clear", &model::SumSquaresObserver::clear);
    py::class_<model::GramObserver, model::MatmulObserver, std::shared_ptr<model::GramObserver>>(
        m, "GramObserver", "GPTQ's Hessian: per input, X^T X in float64; tensors sharing an input share it.")
        .def(py::init<>())
        .def("names", &model::GramObserver::names, "names of the tensors whose inputs were observed")
        .def("gram", &gram, py::arg("name"), "X^T X (cols, cols) of the input of tensor `name`")
        .def("rows", [](const model::GramObserver& o, const std::string& name) { return o.entry(name).rows; },
             py::arg("name"), "rows (tokens) observed for tensor `name`")
        .def("clear", &model::GramObserver::clear);
}

}  // namespace

py::dict config_dict(const model::ModelConfig& c) {
    py::dict d;
    d["arch"] = model::arch_name(c.arch);
    d["n_vocab"] = c.n_vocab;
    d["n_ctx_train"] = c.n_ctx_train;
    d["n_embd"] = c.n_embd;
    d["n_layers"] = c.n_layers;
    d["n_head"] = c.n_head;
    d["n_head_kv"] = c.n_head_kv;
    d["head_dim"] = c.head_dim;
    d["n_ff"] = c.n_ff;
    d["n_rot"] = c.n_rot;
    d["norm_eps"] = c.norm_eps;
    d["rope_freq_base"] = c.rope_global.freq_base;
    d["rope_freq_scale"] = c.rope_global.freq_scale;
    d["sliding_window"] = c.n_swa;
    py::list swa;
    for (bool b : c.layer_is_swa) swa.append(py::bool_(b));
    d["layer_is_swa"] = swa;
    d["logit_softcap"] = c.logit_softcap;
    d["n_expert"] = c.n_expert;              // 0: dense
    d["n_expert_used"] = c.n_expert_used;
    d["n_ff_exp"] = c.n_ff_exp;
    return d;
}

// The fields of a model_config() dict that size the KV cache, back in a ModelConfig.
model::ModelConfig kv_geometry(const py::dict& d) {
    model::ModelConfig c;
    c.n_layers = d["n_layers"].cast<int64_t>();
    c.n_head_kv = d["n_head_kv"].cast<int64_t>();
    c.head_dim = d["head_dim"].cast<int64_t>();
    c.n_swa = d["sliding_window"].cast<int64_t>();
    c.layer_is_swa = d["layer_is_swa"].cast<std::vector<bool>>();
    LOWBIT_CHECK(int64_t(c.layer_is_swa.size()) == c.n_layers, ValueError, "layer_is_swa has ",
                 c.layer_is_swa.size(), " entries for ", c.n_layers, " layers");
    return c;
}

void bind_engine(py::module_& m) {
    m.def("kv_cache_bytes", [](const py::dict& config, int64_t n_ctx, int64_t n_batch, const std::string& kv_type) {
              LOWBIT_CHECK(n_ctx >= 1 && n_batch >= 1, ValueError, "n_ctx and n_batch must be positive, got ",
                           n_ctx, " and ", n_batch);
              const model::ModelConfig c = kv_geometry(config);
              return model::kv_cache_bytes(c, n_ctx, std::min(n_batch, n_ctx), model::parse_kv_type(kv_type, c.head_dim));
          }, py::arg("config"), py::arg("n_ctx"), py::arg("n_batch") = 512, py::arg("kv_type") = "f16",
          "Bytes of the KV cache an Engine with this model_config() dict, n_ctx, n_batch and kv_type "
          "allocates (the rule KVCache and the Engine's memory check use).");
    m.def("model_config", [](const std::string& path) { return config_dict(model::load_config(*open_gguf(path))); },
          py::arg("path"),
          "The engine's validated hyper-parameters of a GGUF model (ModelError naming the key when the "
          "metadata is wrong or does not fit the tensors): the one parse that info, memory estimates and "
          "the engine share.");
    bind_observers(m);
    m.def("eval_batch", &eval_batch, py::arg("items"), py::arg("hidden") = false,
          "items: [(Engine, tokens) or (Engine, tokens, Sampler, history)]: each item's tokens appended at its "
          "engine's n_past, the weight matmuls run once over the rows of all items per pass. Returns per item the "
          "last token's logits (n_vocab,), or with hidden=True the output-normed hidden states (n, n_embd) of all "
          "its tokens; a sampled item gives the token its sampler draws from the last row (history: the penalty "
          "window), or a ValueError instance when that draw failed.");
    py::class_<runtime::RunSignal>(m, "RunSignal",
                                   "A flag another thread sets to end a decode_run after its running step.")
        .def(py::init<>())
        .def("set", [](runtime::RunSignal& s) { s.set.store(true, std::memory_order_relaxed); })
        .def("clear", [](runtime::RunSignal& s) { s.set.store(false, std::memory_order_relaxed); })
        .def_property_readonly("is_set", [](const runtime::RunSignal& s) { return s.set.load(); });
    m.def("decode_run", [](Engine& e, int64_t token, sampling::Sampler& sampler, std::vector<int64_t> history,
                           int64_t max_steps, std::vector<int64_t> stop_ids, double seconds,
                           const runtime::RunSignal* signal) {
              LOWBIT_CHECK(token >= 0 && token <= INT32_MAX, ValueError, "token id ", token, " is out of range");
              runtime::DecodeRun run;
              {
                  py::gil_scoped_release nogil;
                  run = runtime::decode_run(e, int32_t(token), sampler, std::move(history), max_steps, stop_ids,
                                            seconds, signal);
              }
              return py::make_tuple(py::cast(run.drawn), run.error.empty() ? py::object(py::none())
                                                                           : py::object(py::str(run.error)));
          }, py::arg("engine"), py::arg("token"), py::arg("sampler"), py::arg("history"), py::arg("max_steps"),
          py::arg("stop_ids"), py::arg("seconds"), py::arg("signal") = nullptr,
          "Decode steps of one engine in one call (runtime/batch.h): feed token, draw with sampler, feed the draw, "
          "... until max_steps draws, a draw in stop_ids, `seconds` passed or signal set. Returns (drawn ids, "
          "None or the failed draw's ValueError text); every drawn id but the last was fed.");
    m.def("n_past_of", [](const std::vector<Engine*>& engines) {
              for (size_t i = 0; i < engines.size(); ++i)
                  LOWBIT_CHECK(engines[i], ValueError, "n_past_of: item ", i, " is not a session");
              py::gil_scoped_release nogil;     // each read waits for that engine's running call
              std::vector<int64_t> out;
              for (Engine* e : engines) out.push_back(e->n_past());
              return out;
          }, py::arg("engines"),
          "n_past of each engine, read in one call (one release of the GIL for all, where the property "
          "takes one each: a scheduler between steps must not hand the GIL to other threads N times).");
    m.def("supported_architectures", []() { return std::string(model::supported_architectures()); },
          "Comma-separated architectures the engine runs.");
    py::class_<Engine>(m, "Engine", "Decoding engine over one GGUF model: KV cache, batched prefill, decode.")
        .def(py::init([](const std::string& path, int64_t n_ctx, int n_threads, int64_t n_batch,
                         const std::string& kv_type, const std::string& act_precision) {
                 try {
                     py::gil_scoped_release nogil;
                     return std::make_unique<Engine>(path, n_ctx, n_threads, n_batch, kv_type, act_precision);
                 } catch (const FileOpenError& e) {   // errno -> FileNotFoundError, PermissionError...
                     throw_os_error(e, path);
                 }
             }),
             py::arg("path"), py::arg("n_ctx") = 4096, py::arg("n_threads") = 2, py::arg("n_batch") = 512,
             py::arg("kv_type") = "f16", py::arg("act_precision") = "auto")
        .def("eval", &eval, py::arg("tokens"), py::arg("all_logits") = false,
             "Append tokens at positions n_past..; logits of the last token (n_vocab,) or of all (n, n_vocab).")
        .def("eval_sample", [](Engine& e, int64_t token, sampling::Sampler& sampler, const std::vector<int64_t>& history) {
                 LOWBIT_CHECK(token >= 0 && token <= INT32_MAX, ValueError, "token id ", token, " is out of range");
                 py::gil_scoped_release nogil;
                 return e.eval_sample(int32_t(token), sampler, history.data(), history.size());
             }, py::arg("token"), py::arg("sampler"), py::arg("history"),
             "Append one token and return the id `sampler` (a Sampler) draws from its logits, which stay in the "
             "core; history: the tokens so far, or the penalty window's tail of them.")
        .def("new_session", [](const Engine& e, int64_t n_ctx, int n_threads, int64_t n_batch, const std::string& kv_type,
                                const std::string& act_precision) {
                 py::gil_scoped_release nogil;
                 return std::make_unique<Engine>(e.shared_model(), n_ctx, n_threads, n_batch, kv_type, act_precision);
             }, py::arg("n_ctx"), py::arg("n_threads"), py::arg("n_batch"), py::arg("kv_type") = "f16",
             py::arg("act_precision") = "auto",
             "A new engine (session: own KV cache, state, pool, position) on this engine's weights, shared read-only; "
             "the weights stay loaded until every engine on them is closed.")
        .def("copy_prefix_from", [](Engine& e, Engine& other, int64_t n) {
                 py::gil_scoped_release nogil;
                 e.copy_prefix_from(other, n);
             }, py::arg("other"), py::arg("n"),
             "Make this cache hold other's first n positions (K/V rows copied, same model and kv_type); n_past = n.")
        .def("same_model", [](const Engine& e, const Engine& other) { return e.shared_model() == other.shared_model(); },
             py::arg("other"), "True when both engines run on one loaded copy of the weights.")
        .def("truncate", [](Engine& e, int64_t n) { py::gil_scoped_release nogil; return e.truncate(n); },
             py::arg("n"), "Drop cached positions >= n; returns the new n_past (0 when a sliding window lost it).")
        .def("shift", [](Engine& e, int64_t keep, int64_t discard) {
                 py::gil_scoped_release nogil;
                 return e.shift(keep, discard);
             }, py::arg("n_keep"), py::arg("n_discard"),
             "Drop positions [n_keep, n_keep + n_discard) and move later ones down; returns the new n_past.")
        .def("cancel", &Engine::cancel, "Stop the running eval (thread-safe); stays set until reset_cancel().")
        .def("reset_cancel", &Engine::reset_cancel)
        .def("memory", &memory)
        .def_property_readonly("backend", &Engine::backend_name, "\"\" on the CPU, \"cuda: <device>\" after engine_to_cuda")
        .def("set_observer", [](Engine& e, std::shared_ptr<model::MatmulObserver> obs) {
                 py::gil_scoped_release nogil;
                 e.set_observer(std::move(obs));
             }, py::arg("observer").none(true),
             "Report the input of every weight matmul of later evals to `observer` (None detaches).")
        .def("close", [](Engine& e) { py::gil_scoped_release nogil; e.close(); })
        .def_property_readonly("arch", [](const Engine& e) { return model::arch_name(e.config().arch); })
        .def_property_readonly("n_vocab", [](const Engine& e) { return e.config().n_vocab; })
        .def_property_readonly("n_ctx_train", [](const Engine& e) { return e.config().n_ctx_train; })
        .def_property_readonly("n_layers", [](const Engine& e) { return e.config().n_layers; })
        .def_property_readonly("n_embd", [](const Engine& e) { return e.config().n_embd; })
        .def_property_readonly("n_ctx", &Engine::n_ctx)
        .def_property_readonly("n_batch", &Engine::n_batch)
        .def_property_readonly("n_threads", &Engine::n_threads)
        .def_property_readonly("n_past", [](const Engine& e) { py::gil_scoped_release nogil; return e.n_past(); })
        .def_property_readonly("kv_type", &Engine::kv_type)
        .def_property_readonly("kernels", &Engine::kernels)
        .def_property_readonly("act_precision", &Engine::act_precision);
}

}  // namespace lowbit
