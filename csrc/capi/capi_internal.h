// capi_internal.h: what the C API's files share: the handle structs, the per-thread error text
// and guarded(), which turns every exception into a status (no exception leaves the C API).
#pragma once
#include "../../include/lowbit.h"

#include <memory>
#include <new>
#include <string>

#include "common.h"
#include "gguf/gguf.h"
#include "model/forward.h"
#include "runtime/engine.h"
#include "tokenizer/tokenizer.h"

struct lowbit_tokenizer {
    std::unique_ptr<lowbit::tokenizer::Tokenizer> impl;
};

namespace lowbit::capi {

// What a model handle and its sessions share: the weights and the vocabulary. Sessions hold it
// too, so lowbit_model_free before a session's free leaves the session working.
struct ModelShared {
    std::shared_ptr<const model::Model> model;
    lowbit_tokenizer tokenizer;
    std::string architecture;
    int64_t n_ctx = 0;            // the sessions' default
};

}  // namespace lowbit::capi

struct lowbit_model {
    std::shared_ptr<lowbit::capi::ModelShared> shared;
};

namespace lowbit::capi {

void set_last_error(const std::string& message);
void clear_last_error();

inline lowbit_status fail(lowbit_status status, const std::string& message) {
    set_last_error(message);
    return status;
}

// A template the C API does not render (or that rejects the messages, as raise_exception would).
struct TemplateError : Error { using Error::Error; };

// Runs body() and maps what it throws to a status (kinds as lowbit.errors maps them in Python).
template <typename Body>
lowbit_status guarded(Body&& body) {
    try {
        clear_last_error();
        return body();
    } catch (const FileOpenError& e) { return fail(LOWBIT_ERR_FILE, e.what());
    } catch (const GGUFError& e) { return fail(LOWBIT_ERR_FORMAT, e.what());
    } catch (const ModelError& e) { return fail(LOWBIT_ERR_FORMAT, e.what());
    } catch (const ValueError& e) { return fail(LOWBIT_ERR_ARGUMENT, e.what());
    } catch (const TemplateError& e) { return fail(LOWBIT_ERR_TEMPLATE, e.what());
    } catch (const Cancelled& e) { return fail(LOWBIT_ERR_CANCELLED, e.what());
    } catch (const std::bad_alloc&) { return fail(LOWBIT_ERR_MEMORY, "out of memory");
    } catch (const std::exception& e) { return fail(LOWBIT_ERR_INTERNAL, e.what());
    } catch (...) { return fail(LOWBIT_ERR_INTERNAL, "unknown error");
    }
}

}  // namespace lowbit::capi

#define LOWBIT_REQUIRE(cond, what) \
    do { if (!(cond)) return ::lowbit::capi::fail(LOWBIT_ERR_ARGUMENT, what); } while (0)
