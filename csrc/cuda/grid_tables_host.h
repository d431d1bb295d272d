// grid_tables_host.h: GridTables pointing at the codebooks themselves (quant/iq_tables.h,
// blocks.h): what the host arithmetic test uses, and what the device copies are uploaded from.
#pragma once
#include "cuda/quant_hd.h"
#include "quant/iq_tables.h"

namespace lowbit::cuda {

inline GridTables host_grid_tables() {
    return GridTables{kIq2xxsGrid, kIq2xsGrid, kIq2sGrid, kIq3xxsGrid, kIq3sGrid,
                      kIq1sGrid,   kSignsIq2xs, kvalues_iq4nl, kValuesMxfp4};
}

// Bytes of each table, in GridTables order (the device upload walks this list).
struct GridTableBytes {
    const void* host;
    size_t bytes;
};
inline constexpr GridTableBytes kGridTableBytes[] = {
    {kIq2xxsGrid, sizeof(kIq2xxsGrid)}, {kIq2xsGrid, sizeof(kIq2xsGrid)},   {kIq2sGrid, sizeof(kIq2sGrid)},
    {kIq3xxsGrid, sizeof(kIq3xxsGrid)}, {kIq3sGrid, sizeof(kIq3sGrid)},     {kIq1sGrid, sizeof(kIq1sGrid)},
    {kSignsIq2xs, sizeof(kSignsIq2xs)}, {kvalues_iq4nl, sizeof(kvalues_iq4nl)}, {kValuesMxfp4, sizeof(kValuesMxfp4)},
};

}  // namespace lowbit::cuda
